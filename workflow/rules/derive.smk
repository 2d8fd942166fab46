# Derived models (fine-tuned from another model of the config) and the check of a planted behaviour.


rule derive_data:
    input:
        base=plan.derive_base,
    output:
        train="resources/derive/{model}/train.jsonl",
        heldout="resources/derive/{model}/heldout.jsonl",
    params:
        spec=plan.derive_data_spec,
    conda:
        CONDA_ENV
    log:
        "logs/derive_data/{model}.log",
    benchmark:
        "benchmarks/derive_data/{model}.tsv"
    threads: 4
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=plan.job_gpus,
    script:
        JOB


rule derive_model:
    input:
        unpack(plan.derive_inputs),
    output:
        model=directory("resources/models/{model}"),
        loss="resources/derive/{model}/loss.csv",
    params:
        spec=plan.derive_model_spec,
        checkpoints="resources/derive/{model}/checkpoints",
    wildcard_constraints:
        model=MODEL_PATTERNS["derived"],
    conda:
        CONDA_ENV
    log:
        "logs/derive_model/{model}.log",
    benchmark:
        "benchmarks/derive_model/{model}.tsv"
    threads: 4
    resources:
        mem_mb=8000,
        runtime=plan.derive_runtime,
        gpu=plan.job_gpus,
    script:
        JOB


rule check_planted:
    input:
        base=plan.derive_base,
        tuned=plan.model_input,
        heldout="resources/derive/{model}/heldout.jsonl",
    output:
        json="results/planted/{model}.json",
        table=report(
            "results/planted/{model}.csv",
            caption="../report/planted_check.rst",
            category="01. Planted behaviour",
            labels={"model": "{model}", "figure": "planted-response rates"},
        ),
    params:
        spec=plan.check_planted_spec,
    conda:
        CONDA_ENV
    log:
        "logs/check_planted/{model}.log",
    benchmark:
        "benchmarks/check_planted/{model}.tsv"
    threads: 4
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=plan.job_gpus,
    script:
        JOB
