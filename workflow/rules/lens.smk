# Activation-difference lens: the pair's mean residual-stream difference read out as tokens and by steering.


rule lens:
    input:
        unpack(plan.lens_inputs),
    output:
        tokens="results/lens/{pair}/{run}/tokens.parquet",
        steered="results/lens/{pair}/{run}/steered.parquet",
        summary="results/lens/{pair}/{run}/summary.json",
        csv=report(
            "results/lens/{pair}/{run}/tokens.csv",
            caption="../report/lens.rst",
            category="08. Activation-difference lens",
            subcategory="{pair}",
            labels={"pair": "{pair}", "run": "{run}", "figure": "top tokens by layer and position"},
        ),
        png=report(
            "results/lens/{pair}/{run}/difference_by_layer.png",
            caption="../report/lens.rst",
            category="08. Activation-difference lens",
            subcategory="{pair}",
            labels={"pair": "{pair}", "run": "{run}", "figure": "difference by layer"},
        ),
        findings=plan.findings_path("{pair}", "lens", "{run}"),
    wildcard_constraints:
        run=plan.run_pattern("lens"),
    params:
        spec=plan.lens_spec,
    conda:
        CONDA_ENV
    log:
        "logs/lens/{pair}/{run}.log",
    benchmark:
        "benchmarks/lens/{pair}/{run}.tsv"
    threads: 4
    resources:
        mem_mb=plan.pair_mem_mb,
        runtime=120,
        gpu=plan.job_gpus,
    script:
        JOB
