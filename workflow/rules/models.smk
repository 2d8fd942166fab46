# Model materialisation: any source -> resources/models/{model}/ (safetensors, tokenizer, fingerprint).
# A PEFT adapter is merged into its base's materialised folder (adapter_model).


rule materialise_model:
    output:
        model=directory("resources/models/{model}"),
    params:
        spec=plan.materialise_spec,
        stamp=plan.materialise_stamp,
    cache: "omit-software"  # shared between workflows with --cache (SNAKEMAKE_OUTPUT_CACHE)
    conda:
        CONDA_ENV
    log:
        "logs/materialise_model/{model}.log",
    wildcard_constraints:
        model=MODEL_PATTERNS["sourced"],
    resources:
        mem_mb=8000,
        runtime=60,
    script:
        JOB


rule interpolate_model:
    input:
        unpack(plan.interpolate_inputs),
    output:
        model=directory("resources/models/{model}"),
    params:
        spec=plan.interpolate_spec,
    wildcard_constraints:
        model=MODEL_PATTERNS["interpolated"],
    conda:
        CONDA_ENV
    log:
        "logs/interpolate_model/{model}.log",
    benchmark:
        "benchmarks/interpolate_model/{model}.tsv"
    resources:
        mem_mb=8000,
        runtime=30,
    script:
        JOB


rule adapter_model:
    input:
        base=plan.adapter_base,
    output:
        model=directory("resources/models/{model}"),
    params:
        spec=plan.adapter_spec,
    wildcard_constraints:
        model=MODEL_PATTERNS["adapter"],
    conda:
        CONDA_ENV
    log:
        "logs/adapter_model/{model}.log",
    resources:
        mem_mb=8000,
        runtime=30,
    script:
        JOB
