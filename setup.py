"""pip install -e .  (extras: [test] for the suite, [gpu] for the optional flash-attn backend)."""

from setuptools import find_packages, setup

setup(
    name="megatron-ext",
    version="0.1.0",
    description="Readable Megatron-style 3D-parallel LLaMA pretraining on megatron-core, with Triton "
                "kernels, μP and HuggingFace conversion",
    packages=find_packages(include=["megatron_ext", "megatron_ext.*", "mup", "mup.*"]),
    python_requires=">=3.10,<3.13",
    install_requires=[
        # Tested with torch 2.13.0 (CI and `make demo` pin it: see requirements/ci.txt).
        "torch>=2.6",
        "megatron-core==0.16.1",
        "triton>=3.0",
        "numpy",
        "sentencepiece",
        "tensorboard",
        "safetensors",
        "psutil",  # megatron-core's dist_checkpointing needs it and does not declare it
        "tqdm",
    ],
    extras_require={
        "test": ["pytest", "transformers>=4.45", "matplotlib", "pyarrow", "trl==0.28.0", "lm-eval[hf]==0.4.13", "wandb==0.31.0"],
        "plots": ["matplotlib"],
        "parquet": ["pyarrow"],  # tools/preprocess_data.py reading .parquet
        # apex (NVIDIA's, not the PyPI name) is built from source; both are optional backends.
        "gpu": ["flash-attn"],
    },
)
