"""Datasets: VOC 2012, COCO 2014 and a synthetic toy set in the VOC layout."""
