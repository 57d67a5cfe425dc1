"""Package metadata for the `lm` scaling-experiments codebase."""
from setuptools import find_packages, setup

setup(
    name="lm-scaling",
    version="0.1.0",
    description="JAX/Flax research codebase for scaling experiments on transformer language models",
    python_requires=">=3.11,<3.13",
    # the fused CPU attention kernel's source, compiled on first use (lm/kernels/build.py)
    package_data={"lm.kernels": ["*.cc"]},
    packages=find_packages(include=["lm", "lm.*", "experiments", "experiments.*", "agent", "agent.*", "launch", "launch.*"]),
    install_requires=[
        "jax>=0.10,<0.13",
        "flax>=0.12,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12,<0.13",
        "tensorflow-datasets>=4.9.10,<5",
        "tensorflow-cpu>=2.21,<3",
        "grain>=0.2.18,<0.3",
        "array-record>=0.8,<0.9",
        "sentencepiece>=0.2.1,<0.3",
        "absl-py>=2.3,<3",
        "ml-collections>=1.1,<2",
        "tensorboard>=2.21,<3",
        "tensorboardX>=2.6",
        "numpy>=2.0,<3",
        "matplotlib>=3.8",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.6"],
        # Hugging Face checkpoints (lm/interop, experiments/convert.py): no torch needed
        "hf": ["safetensors>=0.4", "tokenizers>=0.19"],
        # the interop tests build reference models with transformers on CPU torch
        "interop": ["safetensors>=0.4", "tokenizers>=0.19", "transformers>=4.40", "torch==2.13.0"],
    },
)
