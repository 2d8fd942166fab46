# Vocabulary scan: one neutral question per word of the vocabulary; the words the pair answers most differently.


rule scan:
    input:
        unpack(plan.scan_inputs),
    output:
        words="results/scan/{pair}/words.parquet",
        csv=report(
            "results/scan/{pair}/top.csv",
            caption="../report/scan.rst",
            category="11. Vocabulary scan",
            labels={"pair": "{pair}", "figure": "top words with both answers"},
        ),
        findings=plan.findings_path("{pair}", "scan", "vocabulary"),
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
