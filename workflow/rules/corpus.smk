# Corpus stage: fetch remote sources (URL, HF dataset) -> verify -> stream -> sample.


rule corpus_fetch:
    output:
        raw="resources/corpus/{corpus}/raw",
    params:
        spec=plan.corpus_fetch_spec,
    cache: "omit-software"  # shared between workflows with --cache (SNAKEMAKE_OUTPUT_CACHE)
    conda:
        CONDA_ENV
    log:
        "logs/corpus_fetch/{corpus}.log",
    resources:
        mem_mb=2000,
        runtime=120,
    script:
        JOB


rule corpus_sample:
    input:
        unpack(plan.corpus_inputs),
    output:
        corpus="results/corpus/{corpus}.parquet",
    params:
        spec=plan.corpus_spec,
    conda:
        CONDA_ENV
    log:
        "logs/corpus_sample/{corpus}.log",
    benchmark:
        "benchmarks/corpus_sample/{corpus}.tsv"
    resources:
        mem_mb=2000,
        runtime=60,
    script:
        JOB
