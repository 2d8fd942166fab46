# Surprisal and Uniform Information Density: human texts vs model texts, per scorer model.


rule uid_score_texts:
    input:
        model=plan.scorer_input,
        completions="results/completions/{promptset}/{model}.parquet",
    output:
        scored="results/uid/{promptset}/{scorer}/texts/{model}.{context}.parquet",
    params:
        spec=plan.uid_score_texts_spec,
    conda:
        CONDA_ENV
    log:
        "logs/uid_score_texts/{promptset}/{scorer}/{model}.{context}.log",
    benchmark:
        "benchmarks/uid_score_texts/{promptset}/{scorer}/{model}.{context}.tsv"
    threads: 4
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=plan.job_gpus,
    script:
        JOB


rule uid_score_human:
    input:
        model=plan.scorer_input,
        promptset="results/prompts/{promptset}.jsonl",
    output:
        scored="results/uid/{promptset}/{scorer}/human.{context}.parquet",
    params:
        spec=plan.uid_score_human_spec,
    conda:
        CONDA_ENV
    log:
        "logs/uid_score_human/{promptset}/{scorer}.{context}.log",
    benchmark:
        "benchmarks/uid_score_human/{promptset}/{scorer}.{context}.tsv"
    threads: 4
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=plan.job_gpus,
    script:
        JOB


rule uid:
    input:
        unpack(plan.uid_inputs),
        scorer=plan.scorer_input,
    output:
        docs="results/uid/{promptset}/{scorer}/docs.parquet",
        csv=report(
            "results/uid/{promptset}/{scorer}/comparisons.csv",
            caption="../report/uid_table.rst",
            category="04. Surprisal and UID",
            subcategory="scorer {scorer}",
            labels={"prompt set": "{promptset}", "scorer": "{scorer}", "figure": "comparisons"},
        ),
        txt=report(
            "results/uid/{promptset}/{scorer}/summary.txt",
            caption="../report/uid_table.rst",
            category="04. Surprisal and UID",
            subcategory="scorer {scorer}",
            labels={"prompt set": "{promptset}", "scorer": "{scorer}", "figure": "summary"},
        ),
        png=report(
            "results/uid/{promptset}/{scorer}/uid.png",
            caption="../report/uid_figure.rst",
            category="04. Surprisal and UID",
            subcategory="scorer {scorer}",
            labels={"prompt set": "{promptset}", "scorer": "{scorer}", "figure": "UID metrics per source"},
        ),
        contours=report(
            "results/uid/{promptset}/{scorer}/contours.png",
            caption="../report/uid_contours.rst",
            category="04. Surprisal and UID",
            subcategory="scorer {scorer}",
            labels={"prompt set": "{promptset}", "scorer": "{scorer}", "figure": "surprisal contours"},
        ),
    params:
        spec=plan.uid_spec,
    conda:
        CONDA_ENV
    log:
        "logs/uid/{promptset}/{scorer}.log",
    benchmark:
        "benchmarks/uid/{promptset}/{scorer}.tsv"
    resources:
        mem_mb=2000,
        runtime=30,
    script:
        JOB
