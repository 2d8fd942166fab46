# Model materialisation: any source -> resources/models/{model}/ (safetensors, tokenizer, fingerprint).


rule materialise_model:
    output:
        directory("resources/models/{model}"),
    params:
        spec=materialise_spec,
        stamp=materialise_stamp,
    cache: "omit-software"  # shared between workflows with --cache (SNAKEMAKE_OUTPUT_CACHE)
    conda:
        CONDA_ENV
    log:
        "logs/materialise_model/{model}.log",
    wildcard_constraints:
        model=SOURCED,
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "python -m lmdelta --log {log} materialise --name {wildcards.model} --spec {params.spec:q} --out {output}"


rule interpolate_model:
    input:
        unpack(interpolate_inputs),
    output:
        directory("resources/models/{model}"),
    params:
        source=model_source,
    wildcard_constraints:
        model=INTERPOLATED,
    conda:
        CONDA_ENV
    log:
        "logs/interpolate_model/{model}.log",
    benchmark:
        "benchmarks/interpolate_model/{model}.tsv"
    resources:
        mem_mb=8000,
        runtime=30,
    shell:
        "python -m lmdelta --log {log} interpolate --name {wildcards.model} --model-a {input.a} --model-b {input.b}"
        " --source {params.source:q} --out {output}"
