# Completions of a pair exported for the LLM Comparator viewer.


rule comparator:
    input:
        unpack(plan.comparator_inputs),
    output:
        json="results/comparator/{pair}/{promptset}.json",
    params:
        spec=plan.comparator_spec,
    conda:
        CONDA_ENV
    log:
        "logs/comparator/{pair}/{promptset}.log",
    benchmark:
        "benchmarks/comparator/{pair}/{promptset}.tsv"
    threads: 2
    resources:
        mem_mb=plan.pair_mem_mb,
        runtime=60,
        gpu=plan.job_gpus,
    script:
        JOB
