"""fairseq_plugins: a fairseq --user-dir plugin for self-supervised speech/audio representation learning.

Runtime dependencies are declared here as ranges; the exact versions of the local CPU venv live in one place,
constraints.txt (the lock that `make setup` installs through PIP_CONSTRAINT). torch is deliberately NOT pinned
here: on GPU clusters users bring their own CUDA build of torch. Its lower bound is 2.4: safe checkpoint loading
allow-lists fairseq's classes with ``torch.serialization.add_safe_globals``, added in torch 2.4.

fairseq itself is an extra (``[fairseq]``: fairseq-fixed, the fork that installs and imports on Python 3.11)
because users often bring their own fairseq checkout. ``[eval]`` adds what the downstream probes' metrics and
plots need, ``[corpus]`` the espeak-ng library the offline mini corpus is synthesised with, ``[hf]`` what
exporting to / loading from Hugging Face formats needs (transformers, safetensors).
"""
from setuptools import find_packages, setup

setup(
    name="fairseq_plugins",
    version="0.1.0",
    description="fairseq plugin: SimSiam + masked reconstruction, LASER / SCORE and SLICER self-supervised speech "
                "learning, WavLM, soft-DTW, downstream probes",
    packages=find_packages(include=["fairseq_plugins", "fairseq_plugins.*", "manifests", "manifests.*"]),
    # the C++ soft-DTW kernel is compiled at first use from this source: without it only the torch path remains
    package_data={"fairseq_plugins.losses": ["_sdtw_cpu.cpp"], "fairseq_plugins.evaluate": ["README.md"]},
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.4",
        "numpy",
        "scipy",
        "soundfile",
        "soxr",
        "librosa>=0.10",
        "scikit-learn",
        "omegaconf>=2.0",
        "hydra-core>=1.0",
    ],
    extras_require={
        "fairseq": ["fairseq-fixed>=0.12.3.1,<0.13"],
        "eval": ["editdistance>=0.6", "matplotlib>=3.5"],
        "corpus": ["espeakng-loader>=0.2.4"],
        "hf": ["transformers>=4.40", "safetensors>=0.4"],
    },
    entry_points={
        "console_scripts": ["fairseq-plugins-train=fairseq_plugins.hydra_train:main"],
    },
)
