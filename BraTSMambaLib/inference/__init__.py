"""Inference: model packages, nnU-Net preprocessing, sliding-window prediction, outputs, the pipeline.

    from BraTSMambaLib.inference.pipeline import SegmentOptions, load_model, segment_case
    model = load_model("path/to/package", SegmentOptions(device="auto"))
    result = segment_case("path/to/case", model, "out", SegmentOptions())

See docs/inference.md for the model package format.
"""
