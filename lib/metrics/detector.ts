/**
 * The feature-detector interface shared by the metrics: a network that maps uint8-valued images
 * to feature vectors (for FID and precision/recall) and class probabilities (for the Inception
 * Score).
 *
 * @module
 */
import type { tf } from "../deps.ts";

/** What a detector returns for a batch of N images. */
export interface DetectorOutput {
  /** Feature vectors `[N, featureDim]` (float32). */
  features: tf.Tensor2D;
  /** Class probabilities `[N, numClasses]` (softmax, float32). */
  probs: tf.Tensor2D;
}

/** A feature detector (Inception-v3, or the MNIST feature network). */
export interface Detector {
  /** Short name (`inception`, `mnist`). */
  readonly name: string;
  /** Length of a feature vector. */
  readonly featureDim: number;
  /** Number of classes of `probs`. */
  readonly numClasses: number;
  /** Channels the detector takes (grey images are repeated to 3 for a 3-channel detector). */
  readonly channels: number;
  /**
   * Runs the detector on NHWC images holding uint8 values 0–255 (as float32 or int32). The input
   * is not disposed; the outputs belong to the caller.
   */
  run(images: tf.Tensor4D): DetectorOutput;
  /** Frees the weights. */
  dispose(): void;
}
