# Two commands do all set-up on a fresh machine: `make demo` (train the tiny model on this machine)
# and `make test` (the whole suite, including a real Slurm cluster started by the tests).
PY ?= python3
PIP := $(PY) -m pip install --disable-pip-version-check -q -c constraints.txt
STAMP := .make
RUNS ?= runs
DEMO_RUN ?= demo
# Raw PDFs/HTML/JSONL/Parquet made by saul.data.raw_corpus for the demo's real prepare pipeline.
DEMO_RAW = $(abspath $(RUNS))/$(DEMO_RUN)-raw
LEGALBENCH ?= $(abspath ../shared/data/legalbench)

.PHONY: setup demo test test-slow test-fast test-container image bench clean-demo

$(STAMP)/python: setup.cfg pyproject.toml constraints.txt scripts/install-pdf-deps.sh
	@mkdir -p $(STAMP)
	bash scripts/install-pdf-deps.sh  # libpoppler-cpp-dev: the `pdftotext` binding compiles against it
	$(PIP) -e '.[train,test]'
	@touch $@

# KenLM (query module + lmplz built from its sdist) and pdftotext for the prepare pipeline (~4 min once).
$(STAMP)/kenlm: scripts/install-kenlm.sh
	@mkdir -p $(STAMP)
	PY=$(PY) bash scripts/install-kenlm.sh
	@touch $@

$(STAMP)/slurm: scripts/install-slurm-test-deps.sh
	@mkdir -p $(STAMP)
	bash scripts/install-slurm-test-deps.sh
	@touch $@

$(STAMP)/apptainer: scripts/install-apptainer.sh
	@mkdir -p $(STAMP)
	bash scripts/install-apptainer.sh
	@touch $@

setup: $(STAMP)/python

# The whole pipeline on tiny-mixtral, 2 DDP ranks per stage (jobs/pipeline.py): the real prepare pipeline on
# generated raw PDFs/HTML/JSONL -> CPT -> IFT -> DPO -> eval of the starting model next to every trained stage
# on LegalBench-format tasks (../shared/data/legalbench, else one of ours) and MMLU-format legal subsets made
# by our code. Ends with the wall time per stage, the evaluation table and where the reports are (~2.5 min).
DEMO_TASKS = $(if $(wildcard $(LEGALBENCH)/*/test.tsv),$(LEGALBENCH),$(DEMO_RAW)/tasks)
demo: $(STAMP)/python $(STAMP)/kenlm
	$(PY) -m saul.data.raw_corpus $(DEMO_RAW) --legalbench $(LEGALBENCH) --kenlm
	$(PY) -c "from saul.eval import fixtures as f; f.write_mmlu('$(DEMO_RAW)/mmlu'); f.write_legalbench_task('$(DEMO_RAW)/tasks')"
	$(PY) jobs/submit.py stage=pipeline model=tiny-mixtral run=$(DEMO_RUN) runs_root=$(RUNS) nproc=2 'pipeline.stages=[prepare,cpt,ift,dpo,eval]' \
	  'pipeline.prepare.data.sources=[{path:$(DEMO_RAW)/legal},{path:$(DEMO_RAW)/replay,role:replay,weight:0.02},{path:$(DEMO_RAW)/math,role:math,weight:0.05}]' \
	  pipeline.prepare.data.piece_mb=0.05 pipeline.prepare.data.kenlm_model=$(DEMO_RAW)/legal.arpa $(if $(wildcard $(LEGALBENCH)),pipeline.prepare.data.decontaminate=[$(LEGALBENCH)]) \
	  pipeline.cpt.optim.lr=1e-3 pipeline.cpt.optim.warmup_steps=5 \
	  'pipeline.eval.eval.tasks=[$(DEMO_TASKS)]' pipeline.eval.eval.mmlu_dir=$(DEMO_RAW)/mmlu

# The container tests in here run only when the CPU image is already cached (`make image`): building it
# takes longer than CI's budget allows (README, "Containers").
test: $(STAMP)/python $(STAMP)/slurm $(STAMP)/kenlm $(STAMP)/apptainer
	$(PY) -m pytest -q -ra -m "not slow"

# The slow ones on their own (a real 2-minute Slurm time limit: 3-10 min), and every container test on the
# CPU image, built first when it is not cached.
test-slow: $(STAMP)/python $(STAMP)/slurm image
	$(PY) -m pytest -q -ra -m "slow or container"

# The CPU Apptainer image (Debian by debootstrap + torch CPU + requirements), cached outside the repository
# under the hash of its dependency files: $(SAUL_IMAGE_CACHE) or /var/cache/saul-images.
image: $(STAMP)/apptainer
	bash containers/build.sh cpu --cache

test-container: $(STAMP)/python $(STAMP)/slurm image
	$(PY) -m pytest -q -ra -m container

# Everything but the real-Slurm and slow end-to-end tests (a quick loop while editing).
test-fast: $(STAMP)/python $(STAMP)/kenlm
	$(PY) -m pytest -q -ra -m "not slurm and not slow"

bench: $(STAMP)/python
	$(PY) benchmarks/stage_overhead.py

clean-demo:
	rm -rf $(RUNS)/$(DEMO_RUN)
