# One-command set-up: `make test` (the whole suite) and `make demo` (the main job on the bundled sample).
# CUDA users: make demo TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= train,onnx,eval,dev
PYTEST_ARGS ?=
# ROS 2 Jazzy wheels from PyPI (rclpy + FastDDS + messages) so the node tests run without a ROS installation;
# skipped when rclpy already imports (a sourced ROS 2), or set ROS_WHEELS= to skip them.
ROS_WHEELS ?= ros-jazzy-rclpy[fastrtps]==7.1.6 ros-jazzy-sensor-msgs==5.3.6 ros-jazzy-nav-msgs==5.3.6 \
	ros-jazzy-geometry-msgs==5.3.6 ros-jazzy-std-srvs==5.3.6 ros-jazzy-diagnostic-msgs==5.3.6
# The ROS 2 launch system (launch, launch_ros: built from source in ../shared/wheels, not on PyPI) and what it needs
# from PyPI, so the launch file runs for real (test/test_launch.py); skipped when that folder is absent.
LAUNCH_WHEELS ?= ../shared/wheels
LAUNCH_DEPS ?= osrf-pycommon==2.0.2 lark==1.3.1 ros-jazzy-ament-index-python==1.8.1 ros-jazzy-lifecycle-msgs==2.0.3 \
	ros-jazzy-rosidl-adapter==4.6.6 ros-jazzy-rosidl-parser==4.6.6 ros-jazzy-rosidl-pycommon==4.6.6 \
	ros-jazzy-rosidl-generator-py==0.22.2 ros-jazzy-rosidl-generator-type-description==4.6.6
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The run-time tests (no torch) under Python 3.10, ROS 2 Humble's Python, with Humble's NumPy constraint
# (constraints/humble.txt): a small venv with only what the node, replay and quantize need, and the bundle they run
# on exported beforehand by $(VENV). `make test` runs them when a working python3.10 is found (PATH or pyenv).
PY310 ?= $(shell for p in python3.10 $(HOME)/.pyenv/versions/3.10*/bin/python3.10; do \
	$$p -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null && echo $$p && break; done)
VENV310 ?= .venv310
RUNTIME_DEPS ?= numpy opencv-python-headless onnxruntime rosbags rosbags-image mcap pyyaml tqdm matplotlib evo pytest
RUNTIME_TESTS ?= test/test_untrusted_bundle.py test/test_replay_topics.py test/test_entry_points.py \
	test/test_recovery.py test/test_ros_io.py test/test_commands_say_what_they_do.py
RUNTIME_BUNDLE := build/runtime_test_bundle

.PHONY: venv test test-py310 demo lint clean

venv: $(STAMP)

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e '.[$(EXTRAS)]'
	$(BIN)/python -c "import rclpy" 2>/dev/null || [ -z "$(strip $(ROS_WHEELS))" ] || \
		$(BIN)/pip install --quiet $(foreach w,$(ROS_WHEELS),'$(w)')
	[ ! -d "$(LAUNCH_WHEELS)" ] || ! $(BIN)/python -c "import rclpy" 2>/dev/null || \
		{ $(BIN)/pip install --quiet --no-deps $(LAUNCH_WHEELS)/launch-*.whl $(LAUNCH_WHEELS)/launch_ros-*.whl && \
		  $(BIN)/pip install --quiet $(LAUNCH_DEPS); }
	touch $(STAMP)

# The learning guard (test_learning's default-recipe run: 700 training steps, about 9 minutes on one core) runs on one
# core beside the rest of the suite, which keeps `make test` within 15 minutes on 2 cores; its report follows the
# suite's. GUARD= runs it in line with the rest instead.
GUARD ?= test/test_learning.py::test_the_default_recipe_learns_depth_on_the_bundled_streets
GUARD_DIR := build/guard_test

test: $(STAMP)
	$(BIN)/ruff check .
ifeq ($(strip $(GUARD)),)
	$(BIN)/python -m pytest $(PYTEST_ARGS)
else
	rm -rf $(GUARD_DIR) && mkdir -p $(GUARD_DIR)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -p no:cacheprovider -q -rP --basetemp=$(GUARD_DIR)/tmp $(GUARD) \
		> $(GUARD_DIR)/report.txt 2>&1 & guard=$$!; trap 'kill $$guard 2>/dev/null' INT TERM; \
	$(BIN)/python -m pytest $(PYTEST_ARGS) --deselect $(GUARD); suite=$$?; \
	wait $$guard; guarded=$$?; echo "--- $(GUARD), beside the suite on one core:"; cat $(GUARD_DIR)/report.txt; \
	[ $$suite -eq 0 ] && [ $$guarded -eq 0 ]
endif
	$(if $(PY310),$(MAKE) test-py310,@echo "no python3.10 found: the Python 3.10 run-time tests were not run")

$(VENV310)/.installed: constraints/humble.txt
	$(PY310) -m venv $(VENV310)
	$(VENV310)/bin/pip install --quiet -c constraints/humble.txt $(RUNTIME_DEPS)
	touch $@

test-py310: $(STAMP) $(VENV310)/.installed
	rm -rf $(RUNTIME_BUNDLE)
	$(BIN)/python -c "from test.conftest import make_small_bundle; make_small_bundle('$(RUNTIME_BUNDLE)')"
	SFM_TEST_BUNDLE=$(abspath $(RUNTIME_BUNDLE)) PYTHONPATH=$(CURDIR) $(VENV310)/bin/python -m pytest -p no:cacheprovider \
		-m "not rclpy" $(RUNTIME_TESTS)

demo: $(STAMP)
	$(BIN)/sfm demo --output demo_output

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(VENV310) demo_output runs build *.egg-info
