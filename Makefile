# vlm_perception developer commands. Every target keeps DDS on loopback, in a domain of its own.
SHELL := /bin/bash
.SHELLFLAGS := -e -o pipefail -c
.DEFAULT_GOAL := help

export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export ROS_DOMAIN_ID := $(shell shuf -i 1-101 -n 1)
# Tests start their own graph processes; one run must not hear another beside it.
export VLM_PERCEPTION_TEST_DOMAIN := $(ROS_DOMAIN_ID)
# Camera-sized frames go whole through a 10 MB shared-memory segment, as under the launch file
# (see the file); a profile you export wins.
export FASTDDS_DEFAULT_PROFILES_FILE ?= $(CURDIR)/config/fastdds_large_frames.xml

ENV := source .venv/bin/activate && source install/setup.bash
SETUP_STAMP := .venv/.requirements.sha256

.PHONY: help setup build test lint demo bench soak models clean

help:
	@echo "make setup   create .venv and build the package into install/ (idempotent)"
	@echo "make demo    simulated camera + node with the shapes models; prints what it sees"
	@echo "make test    the whole test suite (sets up first if needed)"
	@echo "make lint    flake8 (ament settings) and pep257 only"
	@echo "make bench   engine time per capability and stage (real-size random models), then node"
	@echo "             FPS vs bare-engine FPS; log/bench/bench.json and stages.png (~20 min on 2 cores)"
	@echo "make soak    node RSS and rates over 10 min of stream and requests, log/soak/soak.json"
	@echo "             (SOAK_ARGS=\"--minutes 3\" for a shorter one; --help for the options)"
	@echo "make models  retrain the shapes-world models from fixed seeds"

setup:
	@scripts/setup.sh

# Set up only when needed, so that `make test` on a fresh clone does everything.
$(SETUP_STAMP) install/setup.bash: requirements.txt requirements-ros.txt
	@scripts/setup.sh

build: $(SETUP_STAMP)
	@mkdir -p log && scripts/build.sh > log/make-build.log 2>&1 || { cat log/make-build.log; exit 1; }

test: build
	@$(ENV) && pytest test

lint: build
	@$(ENV) && pytest test/test_lint.py

demo: build
	@$(ENV) && python -m vlm_perception.ros.demo

# Not part of test: it takes minutes. Options: vlm-perception bench --help (node part:
# python -m vlm_perception.ros.bench --help)
BENCH_ARGS ?=
bench: build
	@$(ENV) && python -m vlm_perception.cli bench $(BENCH_ARGS)

# Not part of test either. Options: python -m vlm_perception.ros.soak --help
SOAK_ARGS ?=
soak: build
	@$(ENV) && python -m vlm_perception.ros.soak $(SOAK_ARGS)

models: build
	@$(ENV) && python -m vlm_perception.shapes.train --out vlm_perception/models/shapes

clean:
	rm -rf build install log
