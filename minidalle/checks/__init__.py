"""Checks for the course's exercises: `check_<exercise>(fn)` tests a student's function.

Each check calls the function on random inputs and edge cases, compares it with the
package's own version, and raises an AssertionError that says *what* is wrong (shape,
normalization, a mask the wrong way round, a factor ...), or prints one line when it passes.
A stub that still raises NotImplementedError is reported as "not implemented yet".
The exercises live in the notebooks, between `### BEGIN SOLUTION` and `### END SOLUTION`.

One module per group of notebooks, in notebook order: world (00), attention (01, 02), clip (03),
diffusion (04, 05), decoder (06, 07), evaluation (08), gan (09), lora (10), flow (11); _common holds
the helpers they share.
"""
from minidalle.checks.attention import (check_attention_weights, check_causal_mask, check_patchify,
                                        check_text_encoder_parameters)
from minidalle.checks.clip import check_clip_loss, check_clip_step, check_logit_scale
from minidalle.checks.decoder import (check_decoder_loss, check_eps_from_x0, check_film_block, check_guidance,
                                      check_slerp, check_text_diff_direction)
from minidalle.checks.diffusion import check_best_of_n, check_ddim_step, check_q_sample, check_standardize
from minidalle.checks.evaluation import check_entropy, check_rating
from minidalle.checks.gan import check_hinge_losses, check_projection_logit
from minidalle.checks.lora import check_lora_forward, check_merge_conv
from minidalle.checks.flow import check_flow_pair, check_heun_step
from minidalle.checks.world import check_caption_of, check_count_prompts

# notebook -> checks, in the order the exercises appear (docs/TEACHERS.md lists them too)
EXERCISES = {
    "00": ("check_caption_of", "check_count_prompts"),
    "01": ("check_attention_weights", "check_causal_mask"),
    "02": ("check_patchify", "check_text_encoder_parameters"),
    "03": ("check_clip_loss", "check_logit_scale", "check_clip_step"),
    "04": ("check_q_sample", "check_ddim_step"),
    "05": ("check_standardize", "check_best_of_n"),
    "06": ("check_film_block", "check_decoder_loss", "check_eps_from_x0", "check_guidance"),
    "07": ("check_slerp", "check_text_diff_direction"),
    "08": ("check_rating", "check_entropy"),
    "09": ("check_hinge_losses", "check_projection_logit"),
    "10": ("check_lora_forward", "check_merge_conv"),
    "11": ("check_flow_pair", "check_heun_step"),
}

__all__ = [
    "check_caption_of", "check_count_prompts",
    "check_attention_weights", "check_causal_mask",
    "check_patchify", "check_text_encoder_parameters",
    "check_clip_loss", "check_logit_scale", "check_clip_step",
    "check_q_sample", "check_ddim_step",
    "check_standardize", "check_best_of_n",
    "check_film_block", "check_decoder_loss", "check_eps_from_x0", "check_guidance",
    "check_slerp", "check_text_diff_direction",
    "check_rating", "check_entropy",
    "check_hinge_losses", "check_projection_logit",
    "check_lora_forward", "check_merge_conv",
    "check_flow_pair", "check_heun_step",
]
