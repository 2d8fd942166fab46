# Which discovery method surfaces a planted behaviour best.


rule scorecard:
    input:
        files=plan.scorecard_inputs,
    output:
        csv=report(
            "results/scorecard/{pair}.csv",
            caption="../report/scorecard.rst",
            category="8. Discovery scorecard",
            labels={"pair": "{pair}", "figure": "scorecard table"},
        ),
        top=report(
            "results/scorecard/{pair}.top.csv",
            caption="../report/scorecard.rst",
            category="8. Discovery scorecard",
            labels={"pair": "{pair}", "figure": "surfaced texts"},
        ),
        png=report(
            "results/scorecard/{pair}.png",
            caption="../report/scorecard.rst",
            category="8. Discovery scorecard",
            labels={"pair": "{pair}", "figure": "scorecard"},
        ),
    params:
        spec=plan.scorecard_spec,
    conda:
        CONDA_ENV
    log:
        "logs/scorecard/{pair}.log",
    benchmark:
        "benchmarks/scorecard/{pair}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        JOB
