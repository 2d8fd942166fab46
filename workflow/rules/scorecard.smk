# Which discovery method surfaces a planted behaviour best.


rule scorecard:
    input:
        scorecard_inputs,
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
        spec=scorecard_spec,
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
    shell:
        "python -m lmdelta --log {log} scorecard --pair {wildcards.pair} --spec {params.spec:q}"
        " --out-csv {output.csv} --out-top {output.top} --out-png {output.png}"
