# The one script every rule runs (Snakemake's script: directive): the rule's named inputs, outputs,
# params, wildcards, threads and log become a lmdelta.job.Job, run by the stage function registered
# under the rule's name (lmdelta.job.STAGES). `snakemake` is the object Snakemake puts here.
import sys

from lmdelta.job import Job, run

sys.exit(run(Job.from_snakemake(snakemake), under_snakemake=True))  # noqa: F821
