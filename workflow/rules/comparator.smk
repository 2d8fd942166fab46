# Completions of a pair exported for the LLM Comparator viewer.


rule comparator:
    input:
        unpack(comparator_inputs),
    output:
        json="results/comparator/{pair}/{promptset}.json",
    params:
        spec=comparator_spec,
    conda:
        CONDA_ENV
    log:
        "logs/comparator/{pair}/{promptset}.log",
    benchmark:
        "benchmarks/comparator/{pair}/{promptset}.tsv"
    threads: 2
    resources:
        mem_mb=pair_mem_mb,
        runtime=60,
        gpu=job_gpus,
    script:
        JOB
