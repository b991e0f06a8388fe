"""Small helpers shared by the tests."""

from selfsup import demo_data

# A few seconds per epoch on one CPU core: width-8 convnet, 32x32 views, small heads.
TINY_RUN = dict(
    backbone="convnet",
    width=8,
    image_size=32,
    proj_hidden=32,
    proj_dim=16,
    pred_hidden=32,
    batch_size=32,
    epochs=2,
    warmup_epochs=0.5,
    lr=1e-3,
    device="cpu",
    knn_train_limit=100,
)

# A preset for papermill-executed notebooks and sweeps: width-4 convnet, one epoch.
TINY_PRESET = dict(
    method="simclr",
    temperature=0.1,
    backbone="convnet",
    width=4,
    proj_hidden=16,
    proj_dim=8,
    pred_hidden=16,
    image_size=32,
    optimizer="adamw",
    lr=2e-3,
    batch_size=16,
    epochs=1,
    warmup_epochs=0,
    device="cpu",
)


def make_tiny(folder):
    """A 32x32 demo dataset for TINY_RUN: 4 classes of 24 train and 8 val images, 2 OOD classes."""
    demo_data.make_demo(
        folder, seed=1, n_id_classes=4, n_ood_classes=2, train_per_class=24, val_per_class=8, ood_per_class=8, size=32
    )
    return folder


def pdf_text(path) -> str:
    """The text of a PDF with whitespace collapsed (table cells wrap across lines)."""
    from pypdf import PdfReader  # here: the GPU machine runs the CUDA tests of files that import this module

    text = "\n".join(page.extract_text() for page in PdfReader(str(path)).pages)
    return " ".join(text.split())
