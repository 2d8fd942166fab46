# Soft prompts that maximise a pair's divergence, and hard prompts extracted from them.


rule softprompt:
    input:
        unpack(plan.softprompt_inputs),
    output:
        prompt="results/softprompt/{pair}/{run}/prompt.safetensors",
        metrics=report(
            "results/softprompt/{pair}/{run}/metrics.csv",
            caption="../report/softprompt.rst",
            category="07. Soft and hard prompts",
            subcategory="{pair}",
            labels={"pair": "{pair}", "run": "{run}", "figure": "soft-prompt training log"},
        ),
        png=report(
            "results/softprompt/{pair}/{run}/curve.png",
            caption="../report/softprompt.rst",
            category="07. Soft and hard prompts",
            subcategory="{pair}",
            labels={"pair": "{pair}", "run": "{run}", "figure": "soft-prompt training curve"},
        ),
        summary="results/softprompt/{pair}/{run}/summary.json",
    wildcard_constraints:
        run=plan.run_pattern("softprompt"),
    params:
        spec=plan.softprompt_spec,
        checkpoints="resources/softprompt/{pair}/{run}/checkpoints",
        tensorboard="logs/softprompt/{pair}/{run}.tensorboard",
    conda:
        CONDA_ENV
    log:
        "logs/softprompt/{pair}/{run}.log",
    benchmark:
        "benchmarks/softprompt/{pair}/{run}.tsv"
    threads: 4
    resources:
        mem_mb=plan.pair_mem_mb,
        runtime=plan.softprompt_runtime,
        gpu=plan.job_gpus,
    script:
        JOB


rule hardprompt:
    input:
        unpack(plan.hardprompt_inputs),
    output:
        prompts="results/hardprompt/{pair}/{run}/prompts.parquet",
        csv=report(
            "results/hardprompt/{pair}/{run}/prompts.csv",
            caption="../report/hardprompt.rst",
            category="07. Soft and hard prompts",
            subcategory="{pair}",
            labels={"pair": "{pair}", "run": "{run}", "figure": "hard prompts and snippets, ranked"},
        ),
        projection="results/hardprompt/{pair}/{run}/projection.csv",
        summary="results/hardprompt/{pair}/{run}/summary.json",
        findings=plan.findings_path("{pair}", "hardprompt", "{run}"),
        clusters=report(
            "results/hardprompt/{pair}/{run}/clusters.csv",
            caption="../report/hardprompt.rst",
            category="07. Soft and hard prompts",
            subcategory="{pair}",
            labels={"pair": "{pair}", "run": "{run}", "figure": "hard-prompt clusters"},
        ),
        png=report(
            "results/hardprompt/{pair}/{run}/divergence.png",
            caption="../report/hardprompt.rst",
            category="07. Soft and hard prompts",
            subcategory="{pair}",
            labels={"pair": "{pair}", "run": "{run}", "figure": "hard prompts vs snippets"},
        ),
    wildcard_constraints:
        run=plan.run_pattern("softprompt"),
    params:
        spec=plan.hardprompt_spec,
    conda:
        CONDA_ENV
    log:
        "logs/hardprompt/{pair}/{run}.log",
    benchmark:
        "benchmarks/hardprompt/{pair}/{run}.tsv"
    threads: 4
    resources:
        mem_mb=plan.pair_mem_mb,
        runtime=60,
        gpu=plan.job_gpus,
    script:
        JOB
