# Divergence prompt search with an assistant LM, and k-means clusters of what it finds.


rule search:
    input:
        unpack(plan.search_inputs),
    output:
        bank="results/search/{pair}/{run}/bank.parquet",
        cycles=report(
            "results/search/{pair}/{run}/cycles.csv",
            caption="../report/search.rst",
            category="06. Prompt search",
            subcategory="{pair}",
            labels={"pair": "{pair}", "run": "{run}", "figure": "statistics by cycle"},
        ),
        top=report(
            "results/search/{pair}/{run}/top.csv",
            caption="../report/search.rst",
            category="06. Prompt search",
            subcategory="{pair}",
            labels={"pair": "{pair}", "run": "{run}", "figure": "top prompts"},
        ),
        png=report(
            "results/search/{pair}/{run}/divergence_by_cycle.png",
            caption="../report/search.rst",
            category="06. Prompt search",
            subcategory="{pair}",
            labels={"pair": "{pair}", "run": "{run}", "figure": "divergence by cycle"},
        ),
        summary="results/search/{pair}/{run}/summary.json",
        findings=plan.findings_path("{pair}", "search", "{run}"),
    wildcard_constraints:
        run=plan.run_pattern("search"),
    params:
        spec=plan.search_spec,
    conda:
        CONDA_ENV
    log:
        "logs/search/{pair}/{run}.log",
    benchmark:
        "benchmarks/search/{pair}/{run}.tsv"
    threads: 4
    resources:
        mem_mb=plan.pair_mem_mb,
        runtime=240,
        gpu=plan.job_gpus,
    script:
        JOB


rule search_clusters:
    input:
        unpack(plan.search_clusters_inputs),
    output:
        parquet="results/search/{pair}/{run}/clusters.parquet",
        csv=report(
            "results/search/{pair}/{run}/clusters.csv",
            caption="../report/search_clusters.rst",
            category="06. Prompt search",
            subcategory="{pair}",
            labels={"pair": "{pair}", "run": "{run}", "figure": "clusters"},
        ),
        png=report(
            "results/search/{pair}/{run}/clusters.png",
            caption="../report/search_clusters.rst",
            category="06. Prompt search",
            subcategory="{pair}",
            labels={"pair": "{pair}", "run": "{run}", "figure": "clusters by divergence"},
        ),
    wildcard_constraints:
        run=plan.run_pattern("search"),
    params:
        spec=plan.search_clusters_spec,
    conda:
        CONDA_ENV
    log:
        "logs/search_clusters/{pair}/{run}.log",
    benchmark:
        "benchmarks/search_clusters/{pair}/{run}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        JOB
