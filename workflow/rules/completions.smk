# Completions over a temperature grid, and their output-diversity metrics compared across models.


rule prompts_from_corpus:
    input:
        corpus=plan.prompts_corpus,
    output:
        promptset="results/prompts/{promptset}.jsonl",
    params:
        spec=plan.prompts_from_corpus_spec,
    conda:
        CONDA_ENV
    log:
        "logs/prompts_from_corpus/{promptset}.log",
    benchmark:
        "benchmarks/prompts_from_corpus/{promptset}.tsv"
    script:
        JOB


rule completions_shard:
    input:
        model=plan.model_input,
        promptset=plan.promptset_path,
    output:
        shard=temp("results/completions/{promptset}/shards/{model}/{shard}-of-{n}.parquet"),
    params:
        spec=plan.completions_shard_spec,
    conda:
        CONDA_ENV
    log:
        "logs/completions/{promptset}/{model}.{shard}-of-{n}.log",
    benchmark:
        "benchmarks/completions/{promptset}/{model}.{shard}-of-{n}.tsv"
    threads: 4
    resources:
        mem_mb=plan.model_mem_mb,
        runtime=240,
        gpu=plan.job_gpus,
    script:
        JOB


rule completions:
    input:
        shards=plan.completions_shards,
    output:
        completions="results/completions/{promptset}/{model}.parquet",
    conda:
        CONDA_ENV
    log:
        "logs/completions/{promptset}/{model}.log",
    benchmark:
        "benchmarks/completions/{promptset}/{model}.gather.tsv"
    resources:
        mem_mb=2000,
        runtime=30,
    script:
        JOB


rule diversity:
    input:
        completions="results/completions/{promptset}/{model}.parquet",
    output:
        diversity="results/diversity/{promptset}/{model}.parquet",
    params:
        spec=plan.diversity_spec,
    conda:
        CONDA_ENV
    log:
        "logs/diversity/{promptset}/{model}.log",
    benchmark:
        "benchmarks/diversity/{promptset}/{model}.tsv"
    resources:
        mem_mb=3000,
        runtime=60,
    script:
        JOB


rule compare_diversity:
    input:
        diversity=plan.compare_diversity_inputs,
    output:
        csv=report(
            "results/diversity/{promptset}/comparison.csv",
            caption="../report/diversity_table.rst",
            category="03. Output diversity",
            subcategory="{promptset}",
            labels={"prompt set": "{promptset}", "figure": "table across models"},
        ),
        paired=report(
            "results/diversity/{promptset}/paired.csv",
            caption="../report/diversity_paired.rst",
            category="03. Output diversity",
            subcategory="{promptset}",
            labels={"prompt set": "{promptset}", "figure": "paired differences per pair"},
        ),
        png=report(
            "results/diversity/{promptset}/diversity.png",
            caption="../report/diversity_figure.rst",
            category="03. Output diversity",
            subcategory="{promptset}",
            labels={"prompt set": "{promptset}", "figure": "metrics vs temperature"},
        ),
    params:
        spec=plan.compare_diversity_spec,
    conda:
        CONDA_ENV
    log:
        "logs/compare_diversity/{promptset}.log",
    benchmark:
        "benchmarks/compare_diversity/{promptset}.tsv"
    resources:
        mem_mb=2000,
        runtime=30,
    script:
        JOB
