"""Channel Attention Pruning: fold SE attention into BatchNorm, rank channels, prune with torch-pruning."""
from .criteria import CRITERIA, BNScale, check_criterion, check_model_for, create_criterion, list_criteria
from .fold import FoldError, FoldLink, FoldReport, clear_attention_marks, fold_attention, fold_plan
from .support import UnprunableError, check_prunable
from .pruner import PruneConfig, PruneReport, check_ratio, classifier_of, conv_widths, prune_model, rounded_width
from .sparsity import check_sparsity, check_sparsity_model, regularizer_name, sparsity_regularizer

__all__ = ["CRITERIA", "BNScale", "check_criterion", "check_model_for", "create_criterion", "list_criteria",
           "FoldError", "FoldLink", "FoldReport", "clear_attention_marks", "fold_attention", "fold_plan",
           "UnprunableError", "check_prunable", "PruneConfig", "PruneReport", "check_ratio", "classifier_of", "conv_widths", "prune_model", "rounded_width",
           "check_sparsity", "check_sparsity_model", "regularizer_name", "sparsity_regularizer"]
