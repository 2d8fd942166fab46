# lmdelta: find out what changed between language models.
# Stages live in workflow/rules/*.smk; all logic lives in the lmdelta package (workflow/lmdelta/).
from snakemake.utils import min_version

min_version("9.27")


include: "workflow/rules/common.smk"


# The report's landing page: each pair's summary statement (what changed) above the workflow's text.
report: plan.report_landing()


include: "workflow/rules/models.smk"
include: "workflow/rules/derive.smk"
include: "workflow/rules/corpus.smk"
include: "workflow/rules/logprobs.smk"
include: "workflow/rules/completions.smk"
include: "workflow/rules/uid.smk"
include: "workflow/rules/contrastive.smk"
include: "workflow/rules/search.smk"
include: "workflow/rules/softprompt.smk"
include: "workflow/rules/lens.smk"
include: "workflow/rules/scan.smk"
include: "workflow/rules/words.smk"
include: "workflow/rules/summary.smk"
include: "workflow/rules/comparator.smk"
include: "workflow/rules/scorecard.smk"


rule all:
    input:
        plan.targets(),
    default_target: True
