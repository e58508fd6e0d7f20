"""Pure metric functions (classification, detection matching, COCO AP) and their plots."""
