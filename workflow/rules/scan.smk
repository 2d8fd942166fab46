# Vocabulary scan: one neutral question per word of the vocabulary; the words the pair answers most differently.


rule scan:
    input:
        unpack(plan.scan_inputs),
    output:
        words="results/scan/{pair}/words.parquet",
        csv=report(
            "results/scan/{pair}/top.csv",
            caption="../report/scan.rst",
            category="09. Vocabulary scan",
            labels={"pair": "{pair}", "figure": "top words with both answers"},
        ),
    params:
        spec=plan.scan_spec,
    conda:
        CONDA_ENV
    log:
        "logs/scan/{pair}.log",
    benchmark:
        "benchmarks/scan/{pair}.tsv"
    threads: 4
    resources:
        mem_mb=plan.pair_mem_mb,
        runtime=120,
        gpu=plan.job_gpus,
    script:
        JOB


# The scan's strongest words, one by one: sampled answers of both models compared by the words test.
rule scan_confirm:
    input:
        unpack(plan.scan_confirm_inputs),
    output:
        samples="results/scan/{pair}/confirm.parquet",
        csv=report(
            "results/scan/{pair}/confirm.csv",
            caption="../report/scan_confirm.rst",
            category="09. Vocabulary scan",
            labels={"pair": "{pair}", "figure": "confirmed words"},
        ),
        findings=plan.findings_path("{pair}", "scan", "vocabulary"),
    params:
        spec=plan.scan_confirm_spec,
    conda:
        CONDA_ENV
    log:
        "logs/scan_confirm/{pair}.log",
    benchmark:
        "benchmarks/scan_confirm/{pair}.tsv"
    threads: 4
    resources:
        mem_mb=plan.pair_mem_mb,
        runtime=60,
        gpu=plan.job_gpus,
    script:
        JOB
