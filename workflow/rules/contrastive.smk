# Contrastive decoding between the two models of a pair, with per-token divergences.


rule contrastive:
    input:
        unpack(plan.contrastive_inputs),
    output:
        parquet="results/contrastive/{pair}/{run}.parquet",
        csv=report(
            "results/contrastive/{pair}/{run}.ranked.csv",
            caption="../report/contrastive.rst",
            category="05. Contrastive decoding",
            subcategory="{pair}",
            labels={"pair": "{pair}", "run": "{run}", "figure": "texts ranked by divergence"},
        ),
        html=report(
            "results/contrastive/{pair}/{run}.html",
            caption="../report/contrastive.rst",
            category="05. Contrastive decoding",
            subcategory="{pair}",
            labels={"pair": "{pair}", "run": "{run}", "figure": "token-coloured texts"},
        ),
        png=report(
            "results/contrastive/{pair}/{run}.png",
            caption="../report/contrastive.rst",
            category="05. Contrastive decoding",
            subcategory="{pair}",
            labels={"pair": "{pair}", "run": "{run}", "figure": "divergence by position"},
        ),
        findings=plan.findings_path("{pair}", "contrastive", "{run}"),
        baseline=report(
            "results/contrastive/{pair}/{run}.baseline.csv",
            caption="../report/contrastive_baseline.rst",
            category="05. Contrastive decoding",
            subcategory="{pair}",
            labels={"pair": "{pair}", "run": "{run}", "figure": "against a's own samples"},
        ),
    wildcard_constraints:
        run=plan.run_pattern("contrastive"),
    params:
        spec=plan.contrastive_spec,
    conda:
        CONDA_ENV
    log:
        "logs/contrastive/{pair}/{run}.log",
    benchmark:
        "benchmarks/contrastive/{pair}/{run}.tsv"
    threads: 4
    resources:
        mem_mb=plan.pair_mem_mb,
        runtime=120,
        gpu=plan.job_gpus,
    script:
        JOB
