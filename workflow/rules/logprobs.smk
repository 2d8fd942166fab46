# Per-token logprobs, entropy and perplexity per model, compared across models.


rule logprobs_shard:
    input:
        model=plan.model_input,
        corpus="results/corpus/{corpus}.parquet",
    output:
        shard=temp(directory("results/logprobs/{corpus}/shards/{model}/{shard}-of-{n}")),
    params:
        spec=plan.logprobs_shard_spec,
    conda:
        CONDA_ENV
    log:
        "logs/logprobs/{corpus}/{model}.{shard}-of-{n}.log",
    benchmark:
        "benchmarks/logprobs/{corpus}/{model}.{shard}-of-{n}.tsv"
    threads: 4
    resources:
        mem_mb=plan.model_mem_mb,
        runtime=240,
        gpu=plan.job_gpus,
    script:
        JOB


rule logprobs:
    input:
        shards=plan.logprobs_shards,
    output:
        tokens="results/logprobs/{corpus}/{model}.parquet",
        meanprob="results/logprobs/{corpus}/{model}.meanprob.npy",
    conda:
        CONDA_ENV
    log:
        "logs/logprobs/{corpus}/{model}.log",
    benchmark:
        "benchmarks/logprobs/{corpus}/{model}.gather.tsv"
    resources:
        mem_mb=2000,
        runtime=30,
    script:
        JOB


rule entropy_perplexity:
    input:
        logprobs="results/logprobs/{corpus}/{model}.parquet",
        meanprob="results/logprobs/{corpus}/{model}.meanprob.npy",
        corpus="results/corpus/{corpus}.parquet",
        model=plan.model_input,
    output:
        json="results/entropy_perplexity/{corpus}/{model}.json",
        docs="results/entropy_perplexity/{corpus}/{model}.docs.parquet",
    params:
        spec=plan.entropy_spec,
    conda:
        CONDA_ENV
    log:
        "logs/entropy_perplexity/{corpus}/{model}.log",
    benchmark:
        "benchmarks/entropy_perplexity/{corpus}/{model}.tsv"
    resources:
        mem_mb=2000,
        runtime=30,
    script:
        JOB


rule compare_entropy_perplexity:
    input:
        unpack(plan.compare_entropy_inputs),
    output:
        csv=report(
            "results/entropy_perplexity/{corpus}/comparison.csv",
            caption="../report/entropy_table.rst",
            category="02. Entropy and perplexity",
            subcategory="{corpus}",
            labels={"corpus": "{corpus}", "figure": "table across models"},
        ),
        paired=report(
            "results/entropy_perplexity/{corpus}/paired.csv",
            caption="../report/entropy_paired.rst",
            category="02. Entropy and perplexity",
            subcategory="{corpus}",
            labels={"corpus": "{corpus}", "figure": "paired differences per pair"},
        ),
        entropy=report(
            "results/entropy_perplexity/{corpus}/entropy.png",
            caption="../report/entropy_figure.rst",
            category="02. Entropy and perplexity",
            subcategory="{corpus}",
            labels={"corpus": "{corpus}", "figure": "next-token entropy"},
        ),
        doc_perplexity=report(
            "results/entropy_perplexity/{corpus}/doc_perplexity.png",
            caption="../report/doc_perplexity.rst",
            category="02. Entropy and perplexity",
            subcategory="{corpus}",
            labels={"corpus": "{corpus}", "figure": "per-document perplexity"},
        ),
    params:
        spec=plan.compare_entropy_spec,
    conda:
        CONDA_ENV
    log:
        "logs/compare_entropy_perplexity/{corpus}.log",
    benchmark:
        "benchmarks/compare_entropy_perplexity/{corpus}.tsv"
    resources:
        mem_mb=2000,
        runtime=30,
    script:
        JOB


rule corpus_findings:
    input:
        unpack(plan.corpus_findings_inputs),
    output:
        findings=plan.findings_path("{pair}", "corpus", "{corpus}"),
    params:
        spec=plan.corpus_findings_spec,
    conda:
        CONDA_ENV
    log:
        "logs/corpus_findings/{pair}/{corpus}.log",
    benchmark:
        "benchmarks/corpus_findings/{pair}/{corpus}.tsv"
    resources:
        mem_mb=2000,
        runtime=30,
    script:
        JOB


# The same scores on the text: per word (words defined on the text alone) and per byte, so that
# models with different tokenizers join on the same units.
rule text_scores:
    input:
        model=plan.model_input,
        logprobs="results/logprobs/{corpus}/{model}.parquet",
        corpus="results/corpus/{corpus}.parquet",
    output:
        words="results/textscores/{corpus}/{model}.words.parquet",
        bytes="results/textscores/{corpus}/{model}.bytes.parquet",
    params:
        spec=plan.text_scores_spec,
    conda:
        CONDA_ENV
    log:
        "logs/textscores/{corpus}/{model}.log",
    benchmark:
        "benchmarks/textscores/{corpus}/{model}.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        JOB


rule join_text_scores:
    input:
        unpack(plan.join_text_scores_inputs),
    output:
        words="results/textscores/{corpus}/words.parquet",
        png=report(
            "results/textscores/{corpus}/words.png",
            caption="../report/textscores.rst",
            category="02. Entropy and perplexity",
            subcategory="{corpus}",
            labels={"corpus": "{corpus}", "figure": "surprisal per word, across tokenizers"},
        ),
    params:
        spec=plan.join_text_scores_spec,
    conda:
        CONDA_ENV
    log:
        "logs/textscores/{corpus}/join.log",
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        JOB
