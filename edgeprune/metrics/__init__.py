"""A model's own yardstick against ground truth: a detector's mAP (:mod:`.detection`), a
segmenter's mean IoU (:mod:`.segmentation`)."""
