# Which discovery method surfaces a planted behaviour best.


rule scorecard:
    input:
        unpack(plan.scorecard_inputs),
    output:
        csv=report(
            "results/scorecard/{pair}.csv",
            caption="../report/scorecard.rst",
            category="11. Discovery scorecard",
            labels={"pair": "{pair}", "figure": "scorecard table"},
        ),
        top=report(
            "results/scorecard/{pair}.top.csv",
            caption="../report/scorecard.rst",
            category="11. Discovery scorecard",
            labels={"pair": "{pair}", "figure": "surfaced texts"},
        ),
        png=report(
            "results/scorecard/{pair}.png",
            caption="../report/scorecard.rst",
            category="11. Discovery scorecard",
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
        mem_mb=plan.scorecard_mem_mb,
        runtime=30,
    script:
        JOB


# The suite: every method on every organism (and what each control's summary reports).
rule scorecard_matrix:
    input:
        files=plan.matrix_inputs,
    output:
        csv=report(
            "results/suite/matrix.csv",
            caption="../report/matrix.rst",
            category="11. Discovery scorecard",
            labels={"pair": "all", "figure": "methods x organisms table"},
        ),
        organisms=report(
            "results/suite/organisms.csv",
            caption="../report/matrix.rst",
            category="11. Discovery scorecard",
            labels={"pair": "all", "figure": "organisms and controls"},
        ),
        png=report(
            "results/suite/matrix.png",
            caption="../report/matrix.rst",
            category="11. Discovery scorecard",
            labels={"pair": "all", "figure": "methods x organisms"},
        ),
    params:
        spec=plan.matrix_spec,
    conda:
        CONDA_ENV
    log:
        "logs/suite/matrix.log",
    benchmark:
        "benchmarks/suite/matrix.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        JOB
