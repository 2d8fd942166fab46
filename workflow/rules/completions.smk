# Completions over a temperature grid, and their output-diversity metrics compared across models.


rule prompts_from_corpus:
    input:
        corpus=prompts_corpus,
    output:
        promptset="results/prompts/{promptset}.jsonl",
    params:
        spec=spec_of(corpus=prompts_corpus_name, n=prompts_n, instruction=prompts_instruction),
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
        model=model_input,
        promptset=promptset_path,
    output:
        shard=temp("results/completions/{promptset}/shards/{model}/{shard}-of-{n}.parquet"),
    params:
        spec=spec_of(params=completion_params, load_options=load_options, text_format=text_format_arg),
    conda:
        CONDA_ENV
    log:
        "logs/completions/{promptset}/{model}.{shard}-of-{n}.log",
    benchmark:
        "benchmarks/completions/{promptset}/{model}.{shard}-of-{n}.tsv"
    threads: 4
    resources:
        mem_mb=model_mem_mb,
        runtime=240,
        gpu=job_gpus,
    script:
        JOB


rule completions:
    input:
        shards=completions_shards,
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
        spec=lambda wildcards: json.dumps(diversity_params(wildcards)),
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
        diversity=diversity_inputs,
    output:
        csv=report(
            "results/diversity/{promptset}/comparison.csv",
            caption="../report/diversity_table.rst",
            category="3. Output diversity",
            subcategory="{promptset}",
            labels={"prompt set": "{promptset}", "figure": "table across models"},
        ),
        png=report(
            "results/diversity/{promptset}/diversity.png",
            caption="../report/diversity_figure.rst",
            category="3. Output diversity",
            subcategory="{promptset}",
            labels={"prompt set": "{promptset}", "figure": "metrics vs temperature"},
        ),
    params:
        spec=spec_of(models=completion_models),
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
