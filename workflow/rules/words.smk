# Words that changed: words over-represented in the tuned model's texts, in every text set of a pair.


rule words:
    input:
        unpack(plan.words_inputs),
    output:
        table="results/words/{pair}/{set}.parquet",
        csv=report(
            "results/words/{pair}/{set}.csv",
            caption="../report/words.rst",
            category="10. Words that changed",
            subcategory="{pair}",
            labels={"pair": "{pair}", "set": "{set}"},
        ),
        findings=plan.findings_path("{pair}", "words", "{set}"),
    wildcard_constraints:
        **plan.words_patterns(),
    params:
        spec=plan.words_spec,
    conda:
        CONDA_ENV
    log:
        "logs/words/{pair}/{set}.log",
    benchmark:
        "benchmarks/words/{pair}/{set}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        JOB


# What elicits the change: the words of the prompts whose tuned completions use the words reported above.


rule elicit:
    input:
        unpack(plan.elicit_inputs),
    output:
        table="results/elicit/{pair}/{promptset}.parquet",
        csv=report(
            "results/elicit/{pair}/{promptset}.csv",
            caption="../report/elicit.rst",
            category="10. Words that changed",
            subcategory="{pair}",
            labels={"pair": "{pair}", "set": "elicit-{promptset}"},
        ),
        findings=plan.findings_path("{pair}", "elicit", "{promptset}"),
    wildcard_constraints:
        **plan.words_patterns(elicit=True),
    params:
        spec=plan.elicit_spec,
    conda:
        CONDA_ENV
    log:
        "logs/elicit/{pair}/{promptset}.log",
    benchmark:
        "benchmarks/elicit/{pair}/{promptset}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        JOB
