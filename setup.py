"""vlp_jax: pretraining vision-language models in JAX/Flax, TPU first."""
import setuptools

# Pinned to the versions tested together; widen only after running `make test` on them.
INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "tensorflow-cpu>=2.21,<2.22",
    "tensorflow-datasets>=4.9.10,<4.10",
    "sentencepiece>=0.2.3,<0.3",
    "regex>=2026.5.9",  # GPT-2 pre-tokenisation's \p{L}/\p{N}, as GPT-2's encoder and HF use
    "ml_collections>=1.1.0,<1.2",
    "clu>=0.0.12,<0.1",
    "tensorboard>=2.21,<2.22",  # clu's metric writers need it; tensorflow-cpu does not pull it in.
    "numpy>=2.0",
    "pillow>=10",  # image checks and image-folder inputs
    "nltk>=3.10.4,<3.11",  # WordNet for CatLIP's synset labels (data from NLTK or Debian)
    # Weights and tokenizers of released models (models/import_*.py, data/clip_bpe.py):
    # safetensors is the format HF and open_clip publish in; tokenizers is HF's maintained
    # BPE implementation (CLIP's vocabulary), faster than a Python loop and tested by them.
    "safetensors>=0.8,<1",
    "tokenizers>=0.23,<0.24",
    "ftfy>=6,<7",  # the text clean-up of CLIP's BPE (open_clip's tokenizer): the same ids
]

setuptools.setup(
    name="vlp_jax",
    version="0.1.0",
    description="Pretraining vision-language models (CLIP, SigLIP, CoCa, ...) in JAX/Flax.",
    packages=setuptools.find_packages(include=["vlp_jax", "vlp_jax.*"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # jupytext..matplotlib: tests/test_notebooks.py runs notebooks/*.py (jupytext's
        # percent format) in a python3 kernel (ipykernel) with nbclient; they plot (matplotlib).
        "test": ["pytest>=8", "pytest-xdist>=3", "jupytext>=1.19,<2", "nbclient>=0.11,<0.12",
                 "nbformat>=5.11,<6", "ipykernel>=7,<8", "matplotlib>=3.11,<4"],
        "tpu": ["jax[tpu]>=0.10.2,<0.11"],
        "gpu": ["jax[cuda12]>=0.10.2,<0.11"],
        # bench/compare_open_clip.py: open_clip's own models and losses on a CPU torch (the
        # build of torch 2.13.0 that pip finds first on a machine with the CPU wheel).
        # transformers + safetensors: the reference implementation and checkpoint format of
        # HF-released models (models/import_hf_blip.py and its parity tests).
        "bench": ["torch==2.13.0", "open_clip_torch==3.3.0", "transformers>=5.24,<6"],
    },
)
