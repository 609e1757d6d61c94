"""The cost model: features of scheduled kernels and an XGBoost ranking model over them.
Imports only nestor.ir (design.md, Layering)."""
from .features import (FEATURE_NAMES, STATEMENT_NAMES, AccessFeatures, ArithFeatures, CacheFeatures, LoopFeatures,
                       ShapeFeatures, StatementFeatures, kernel_features, named_statement_features, statement_features)
from .model import CostModel, CostModelError, features, pairwise_accuracy, sampled_top_k_recall, top_k_recall
