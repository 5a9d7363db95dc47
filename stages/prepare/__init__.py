"""Stage `prepare`: source layouts (digits, COCO, VOC, NUS-WIDE, CUB) → prepared datasets, plus observation regimes."""
