"""fairseq_plugins: a fairseq --user-dir plugin for five self-supervised speech/audio methods.

torch is deliberately NOT pinned here: on GPU clusters users bring their own CUDA build of torch.
The local CPU install pins it through constraints.txt (see scripts/setup_venv.sh and README.md).
"""
from setuptools import find_packages, setup

setup(
    name="fairseq_plugins",
    version="0.1.0",
    description="fairseq plugin: SimSiam+recon, MGF, CSC, LASER and SLICER self-supervised speech learning",
    packages=find_packages(include=["fairseq_plugins", "fairseq_plugins.*", "manifests", "manifests.*"]),
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.0",
        "numpy",
        "scipy",
        "soundfile",
        "soxr",
        "librosa>=0.10",
    ],
    extras_require={
        "fairseq": ["fairseq-fixed==0.12.3.1"],
        "corpus": ["espeakng-loader==0.2.4"],
    },
    include_package_data=True,
)
