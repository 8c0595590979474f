"""trust_monai.detect"""
