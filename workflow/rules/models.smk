# Model materialisation: any source -> resources/models/{model}/ (safetensors, tokenizer, fingerprint).


rule materialise_model:
    output:
        model=directory("resources/models/{model}"),
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
    script:
        JOB


rule interpolate_model:
    input:
        unpack(interpolate_inputs),
    output:
        model=directory("resources/models/{model}"),
    params:
        spec=spec_of(source=model_source),
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
    script:
        JOB
