# Corpus stage: fetch remote sources (URL, HF dataset) -> verify -> stream -> sample.


rule corpus_fetch:
    output:
        "resources/corpus/{corpus}/raw",
    params:
        spec=corpus_fetch_spec,
    cache: "omit-software"  # shared between workflows with --cache (SNAKEMAKE_OUTPUT_CACHE)
    conda:
        CONDA_ENV
    log:
        "logs/corpus_fetch/{corpus}.log",
    resources:
        mem_mb=2000,
        runtime=120,
    shell:
        "python -m lmdelta --log {log} corpus-fetch --name {wildcards.corpus} --spec {params.spec:q} --out {output}"


rule corpus_sample:
    input:
        unpack(corpus_inputs),
    output:
        "results/corpus/{corpus}.parquet",
    params:
        spec=corpus_spec,
        raw=corpus_raw_arg,
    conda:
        CONDA_ENV
    log:
        "logs/corpus_sample/{corpus}.log",
    benchmark:
        "benchmarks/corpus_sample/{corpus}.tsv"
    resources:
        mem_mb=2000,
        runtime=60,
    shell:
        "python -m lmdelta --log {log} corpus-sample --name {wildcards.corpus} --spec {params.spec:q} {params.raw} --out {output}"
