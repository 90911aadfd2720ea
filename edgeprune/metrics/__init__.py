"""A model's own yardstick against ground truth: a detector's mAP (:mod:`.detection`), a
segmenter's mean IoU (:mod:`.segmentation`)."""

# What a quality floor's --max-drop counts points of, by the figure's key.
FLOOR_METRICS = {"top1": "top-1", "map50_95": "mAP50-95", "miou": "mIoU"}
