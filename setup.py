"""sfm_ros: SfMLearner monocular depth and visual odometry for ROS 2.

Works as an ament_python package (`colcon build`) and with plain pip (`pip install -e .[train,onnx,dev]`).
"""

from glob import glob

from setuptools import setup

PACKAGE = "sfm_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=[PACKAGE, f"{PACKAGE}.models", f"{PACKAGE}.backends", f"{PACKAGE}.benchmarks", f"{PACKAGE}.odometry",
              "training"],
    package_data={PACKAGE: ["data/*.txt"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
    ],
    python_requires=">=3.10",
    # The node with the onnxruntime or TensorRT backend needs only these; torch stays optional.
    install_requires=["numpy>=1.21", "pyyaml>=5.4", "opencv-python-headless>=4.5", "setuptools"],
    extras_require={
        "train": ["torch>=2.1", "safetensors>=0.4", "tensorboard>=2.10", "tqdm>=4.60",
                  "rosbags>=0.10", "rosbags-image>=0.9", "mcap>=1.1", "matplotlib>=3.5", "scipy>=1.7"],
        "onnx": ["onnx>=1.14", "onnxruntime>=1.16", "onnxscript>=0.1", "safetensors>=0.4", "tqdm>=4.60"],
        "eval": ["evo>=1.20", "matplotlib>=3.5", "rosbags>=0.10", "rosbags-image>=0.9", "mcap>=1.1", "tqdm>=4.60"],
        "tensorrt": ["tensorrt>=8.5", "pycuda>=2022.1"],
        "dev": ["pytest>=7", "ruff>=0.5", "build>=1.0", "evo>=1.20"],
    },
    zip_safe=True,
    maintainer="sfm_ros developers",
    maintainer_email="sfm_ros@example.com",
    description="SfMLearner depth and ego-motion: PyTorch trainer, ONNX/TensorRT export, ROS 2 node",
    license="MIT",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "sfm = sfm_ros.cli:main",
            "sfm_node = sfm_ros.node:main",
        ],
    },
)
