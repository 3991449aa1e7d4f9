"""Train PCSS on MS COCO 2014: train_PCSS.py with the COCO defaults of the authors' code
(W = 0.4 0.4, FIM from epoch 3, MPC CAM loss from epoch 3, validation from epoch 10).

    python train_PCSS_coco.py --name pcss_coco --data-path data/COCO2014
"""
import train_PCSS
from train_PCSS import run
from utils.args import launch_script
from utils.errors import run_main


def get_args_parser():
    return train_PCSS.get_args_parser("COCO", "data/COCO2014", W=(0.4, 0.4), fim_start_epoch=3,
                                      mpc_cam_start_epoch=3, val_start_epoch=10)


if __name__ == "__main__":
    run_main(lambda: launch_script(run, get_args_parser()))
