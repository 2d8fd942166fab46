# What changed, in words: every discovery method's findings of a pair on one page.


rule summary:
    input:
        unpack(plan.summary_inputs),
    output:
        json="results/summary/{pair}.json",
        html=report(
            "results/summary/{pair}.html",
            caption="../report/summary.rst",
            category="00. What changed",
            labels={"pair": "{pair}"},
        ),
    params:
        spec=plan.summary_spec,
    conda:
        CONDA_ENV
    log:
        "logs/summary/{pair}.log",
    benchmark:
        "benchmarks/summary/{pair}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        JOB
