# Completions over a temperature grid, and their output-diversity metrics compared across models.


rule prompts_from_corpus:
    input:
        prompts_corpus,
    output:
        "results/prompts/{promptset}.jsonl",
    params:
        corpus=prompts_corpus_name,
        n=prompts_n,
        instruction=prompts_instruction,
    conda:
        CONDA_ENV
    log:
        "logs/prompts_from_corpus/{promptset}.log",
    benchmark:
        "benchmarks/prompts_from_corpus/{promptset}.tsv"
    shell:
        "python -m lmdelta --log {log} prompts-from-corpus --corpus {input} --corpus-name {params.corpus}"
        " --n-prompts {params.n:q} --instruction {params.instruction:q} --out {output}"


rule completions_shard:
    input:
        model=model_input,
        promptset=promptset_path,
    output:
        temp("results/completions/{promptset}/shards/{model}/{shard}-of-{n}.parquet"),
    params:
        params=completion_params,
        options=load_options,
        text_format=text_format_arg,
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
    shell:
        "python -m lmdelta --log {log} completions-shard --model-dir {input.model} --promptset {input.promptset}"
        " --out {output} --params {params.params:q} --load-options {params.options:q}"
        " --text-format {params.text_format:q}"
        " --shard {wildcards.shard} --n-shards {wildcards.n} --threads {threads}"


rule completions:
    input:
        completions_shards,
    output:
        "results/completions/{promptset}/{model}.parquet",
    conda:
        CONDA_ENV
    log:
        "logs/completions/{promptset}/{model}.log",
    benchmark:
        "benchmarks/completions/{promptset}/{model}.gather.tsv"
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "python -m lmdelta --log {log} completions-gather --shards {input} --out {output}"


rule diversity:
    input:
        "results/completions/{promptset}/{model}.parquet",
    output:
        "results/diversity/{promptset}/{model}.parquet",
    params:
        params=diversity_params,
    conda:
        CONDA_ENV
    log:
        "logs/diversity/{promptset}/{model}.log",
    benchmark:
        "benchmarks/diversity/{promptset}/{model}.tsv"
    resources:
        mem_mb=3000,
        runtime=60,
    shell:
        "python -m lmdelta --log {log} diversity --completions {input} --out {output} --params {params.params:q}"


rule compare_diversity:
    input:
        diversity_inputs,
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
        models=completion_models,
    conda:
        CONDA_ENV
    log:
        "logs/compare_diversity/{promptset}.log",
    benchmark:
        "benchmarks/compare_diversity/{promptset}.tsv"
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "python -m lmdelta --log {log} compare-diversity --promptset {wildcards.promptset} --models {params.models}"
        " --inputs {input} --out-csv {output.csv} --out-png {output.png}"
