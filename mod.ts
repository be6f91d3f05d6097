/**
 * sida: SiD / SiDA / SiD²A one-step distillation of EDM diffusion models, in Deno + TypeScript.
 *
 * This module is the public API. It works when imported by URL: every third-party dependency is
 * pinned with a full `npm:` specifier in `lib/deps.ts`.
 *
 * Tensors are NHWC (`[N, H, W, C]`) tfjs tensors; network weights keep the PyTorch state-dict
 * names and layouts at the file boundary, so EDM checkpoints round-trip.
 *
 * @example Denoise a batch with a freshly built network
 * ```ts
 * import { createNetwork, initBackend, preset, tf } from "./mod.ts";
 *
 * await initBackend();  // webgpu on a GPU, else native (OpenBLAS), else cpu
 * const net = createNetwork(preset("mnist"), { seed: 0 });
 * const x = tf.randomNormal([4, 32, 32, 1]) as tf.Tensor4D;
 * const labels = tf.oneHot(tf.tensor1d([0, 1, 2, 3], "int32"), 10).toFloat() as tf.Tensor2D;
 * const denoised = net.denoise(x, 2.5, { labels });                       // [4, 32, 32, 1]
 * const logits = net.denoise(x, 2.5, { labels, returnFlag: "encoder" });  // [4, 8, 8, 1]
 * ```
 *
 * @example Sample with the EDM (Heun) sampler and save the network
 * ```ts
 * import { edmSampler, loadNetwork, saveNetwork } from "./mod.ts";
 *
 * const net = await loadNetwork("teacher.safetensors");
 * const images = await edmSampler(net, { batch: 16, seed: 1, numSteps: 18 }); // NHWC in [-1, 1]
 * await saveNetwork(net, "copy.safetensors");
 * ```
 *
 * @module
 */

/** The tfjs namespace the library itself uses (`@tensorflow/tfjs` 4.22, with gradients). */
export { tf } from "./lib/deps.ts";

// Runtime.
export {
  BACKEND_NAMES,
  BackendError,
  type BackendInfo,
  type BackendName,
  currentBackend,
  describeBackend,
  initBackend,
  preferVulkanWebGpu,
} from "./lib/runtime/backend.ts";
export {
  type Blas,
  BlasUnavailableError,
  loadBlas,
  NATIVE_BACKEND,
  registerNativeBackend,
} from "./lib/runtime/native/backend.ts";

// Networks.
export {
  CONFIG_LIMITS,
  ConfigError,
  DHARIWAL_UNET_DEFAULTS,
  type DhariwalUNetConfig,
  type EdmKwargs,
  estimateParameters,
  fromEdmKwargs,
  type NetworkConfig,
  type NetworkConfigInput,
  preset,
  PRESET_NAMES,
  type PresetName,
  resolveConfig,
  SONG_UNET_DEFAULTS,
  type SongUNetConfig,
  toEdmKwargs,
  type UNetConfig,
} from "./lib/nets/config.ts";
export type { DenoiseOptions, Denoiser, DenoiseResult, ReturnFlag } from "./lib/nets/types.ts";
export { EDMPrecond, InputError } from "./lib/nets/precond.ts";
export { Module, StateDictError } from "./lib/nets/module.ts";
export { withDropoutSeed } from "./lib/nets/layers.ts";
export {
  configFromMetadata,
  createNetwork,
  loadNetwork,
  type LoadNetworkOptions,
  NETWORK_FORMAT,
  saveNetwork,
} from "./lib/nets/network.ts";

// Diffusion.
export { edmSampler, type EdmSamplerOptions, toUint8Images } from "./lib/diffusion/sampler.ts";
export { edmSigmaSteps, type EdmSigmaStepsOptions } from "./lib/diffusion/schedule.ts";
export { GaussianDenoiser, type GaussianDenoiserOptions } from "./lib/diffusion/gaussian.ts";

// Tensor files.
export {
  checkFiniteWeights,
  countNonFinite,
  type DType,
  fromTfTensor,
  type HostTensor,
  hostTensor,
  IoError,
  printable,
  toFloat32,
  toTfTensor,
} from "./lib/io/host_tensor.ts";
export { decodeNpy, encodeNpy, readNpy, writeNpy } from "./lib/io/npy.ts";
export {
  decodeSafetensors,
  encodeSafetensors,
  readSafetensors,
  readSafetensorsHeader,
  writeSafetensors,
} from "./lib/io/safetensors.ts";
export { writeFileAtomic } from "./lib/io/atomic.ts";

// Data.
export {
  createImageDataset,
  type ImageDataset,
  type ImageDatasetInit,
  imageFileName,
  isLatentDataset,
  LATENT_RAW_MEAN,
  LATENT_RAW_STD,
  LatentDataset,
  loadImageZip,
  type LoadImageZipOptions,
  mnistDataset,
  writeImageZip,
  writeLatentZip,
} from "./lib/data/dataset.ts";
export { isLabelsOnly, loadLabelsJson } from "./lib/data/labels.ts";
export {
  type Batch,
  epochPermutation,
  InfiniteSampler,
  makeBatch,
  type MakeBatchOptions,
  type SamplerState,
} from "./lib/data/sampler.ts";
export {
  augment,
  AUGMENT_DEFAULTS,
  augmentDim,
  type AugmentOptions,
  type AugmentRandom,
  augmentRandomFrom,
  edmAugmentOptions,
  seededAugmentRandom,
} from "./lib/data/augment.ts";
export { kid, type KidOptions, type KidResult } from "./lib/metrics/kid.ts";

// Distillation: losses (pure functions of tensors), noise levels, optimiser, EMA.
export {
  fakeScoreDiscriminatorLoss,
  fakeScoreLoss,
  fakeStepObjective,
  G_STEP_WARMUP_NIMG,
  GAN_WARMUP_NIMG,
  generatorObjective,
  type LossResult,
  sampleKeepMask,
  sidaDiscriminatorLoss,
  sidaGeneratorAdversarialLoss,
  sidGeneratorLoss,
  stopGradient,
} from "./lib/distill/losses.ts";
export {
  DEFAULT_ALPHA,
  DEFAULT_TMAX,
  edmLossWeight,
  sampleFakeSigma,
  sampleGeneratorSigma,
} from "./lib/distill/sigma.ts";
export { mixSeed, type RandomSource, seededRandom } from "./lib/runtime/random.ts";
// Training (shared by teacher training and distillation): optimiser, EMA, gradients, guard.
export { Adam, type AdamOptions } from "./lib/train/optim.ts";
export { Ema, emaBeta, type EmaOptions, updateEma } from "./lib/train/ema.ts";
export {
  accumulateGradients,
  clipValues,
  nanToNum,
  sanitizeGradients,
} from "./lib/train/gradients.ts";
export {
  DEFAULT_NON_FINITE_LIMIT,
  NonFiniteGuard,
  NonFiniteTrainingError,
} from "./lib/train/guard.ts";

// Checkpoint import (.pkl / .pt, safe pickle reader).
export {
  describeImport,
  importNetwork,
  type ImportOptions,
  type ImportSummary,
  importToSafetensors,
} from "./lib/nets/import.ts";

// EDM2 networks (magnitude-preserving UNet, logvar head) and their checkpoints (docs/edm2.md).
export {
  createEdm2Network,
  type Edm2Config,
  type Edm2ConfigInput,
  EDM2Precond,
  edm2Preset,
  estimateEdm2Parameters,
  fromEdm2Kwargs,
  toEdm2Kwargs,
} from "./lib/nets/edm2.ts";
export {
  importEdm2Network,
  importEdm2ToSafetensors,
  inspectEdm2Pickle,
  loadEdm2Network,
  saveEdm2Network,
} from "./lib/nets/import_edm2.ts";
// A network file of either family (EDM or EDM2), by what the file holds.
export { loadDenoisingNetwork } from "./lib/nets/load.ts";
// The Stable Diffusion VAE decoder (diffusers AutoencoderKL), for EDM2's latents (docs/edm2.md).
export {
  decodeLatents,
  decodeLatentsToImages,
  decodeLatentsToUint8,
  EDM2_LATENT_SCALING,
  type LatentScaling,
  loadVaeDecoder,
  SD_VAE_CONFIG,
  VaeDecoder,
  type VaeDecoderConfig,
} from "./lib/nets/vae.ts";

// Evaluation.
export {
  FeatureStats,
  featureStats,
  fid,
  type FidOptions,
  fidTerms,
  inceptionScore,
  type MeanStd,
  MetricError,
  precisionRecall,
  type Stats,
} from "./lib/metrics/stats.ts";
export { loadRefStats, saveRefStats } from "./lib/metrics/ref_stats.ts";
export { checkCovariance, LinalgError } from "./lib/metrics/linalg.ts";
export { decodeNpz, encodeNpz, readNpz, writeNpz } from "./lib/metrics/npz.ts";
export type { Detector, DetectorOutput } from "./lib/metrics/detector.ts";
export {
  DEFAULT_MNIST_FEATURES,
  DEFAULT_MNIST_REF_STATS,
  MnistFeatureNet,
} from "./lib/metrics/mnist_features.ts";
export {
  generateBatches,
  type GeneratedBatch,
  type GenerateOptions,
  imageGridPng,
  isLatentNetwork,
  outputImageShape,
  SIGMA_INIT,
  writeImageGrid,
} from "./lib/metrics/generate.ts";
export {
  INCEPTION_CLASSES,
  INCEPTION_FORMAT,
  INCEPTION_RESOLUTION,
  type InceptionOptions,
  type InceptionOutput,
  InceptionV3,
} from "./lib/metrics/inception.ts";

// Distillation: the training loop, runs and tasks.
export {
  type DistillConfig,
  Distiller,
  type DistillerInit,
  type DistillerState,
  type DistillMethod,
  type DistillNetwork,
  type IterationStats,
  resolveDistillConfig,
} from "./lib/distill/distiller.ts";
export {
  DEFAULT_INIT_SIGMA,
  generate,
  type GenerateOptions as OneStepGenerateOptions,
  generatorNoise,
} from "./lib/distill/generator.ts";
export {
  type DistillationOptions,
  type DistillationResult,
  runDistillation,
} from "./lib/distill/train.ts";
export {
  DISTILL_PRESET_NAMES,
  distillPreset,
  type DistillPresetName,
} from "./lib/distill/presets.ts";
export { readTrainingState, type SavedTrainingState } from "./lib/distill/run.ts";
export { findLatestState, networkFingerprint } from "./lib/train/run_folder.ts";
export {
  runTraining,
  type Trainer,
  type TrainerState,
  type TrainingKind,
  type TrainingResult,
  type TrainingRun,
  withInterrupt,
} from "./lib/train/driver.ts";

// EDM teacher training (`deno task teacher`).
export {
  parseTeacherArgs,
  readTeacherState,
  resolveTeacherConfig,
  type SavedTeacherState,
  TEACHER_DEFAULTS,
  type TeacherConfig,
  teacherEmaBeta,
  teacherLearningRate,
  type TeacherOptions,
  type TeacherResult,
  type TeacherRunInfo,
  type TeacherState,
  type TeacherStepStats,
  TeacherTrainer,
  type TeacherTrainerInit,
  trainTeacher,
} from "./lib/diffusion/teacher_training.ts";

// Pipeline (`deno task distill`).
export {
  DEFAULT_EVAL_NUM,
  DEFAULT_MNIST_TEACHER,
  type DistillChainOptions,
  type DistillChainResult,
  MNIST_DEFAULT_KIMG,
  parseDistillChainArgs,
  runDistillChain,
  STAGE_NAMES,
  type StageName,
  type StageStatus,
} from "./lib/pipeline/distill.ts";
export {
  type ChainReport,
  readShippedTeacherFid,
  renderReportMarkdown,
  type StageReport,
  type TeacherFid,
} from "./lib/pipeline/report.ts";
export { fidPlotSvg, lossPlotSvg, svgToPng, writeChainPlots } from "./lib/pipeline/plots.ts";
export {
  ShipError,
  shipGenerator,
  SHIPPED_FORMAT,
  type ShippedGenerator,
  type ShippedScores,
} from "./lib/pipeline/ship.ts";

// Notebooks (Deno Jupyter kernel): inline grids, plots, tables, progress, stop button, smoke files.
export {
  classLabels,
  escapeHtml,
  flush,
  htmlTable,
  inNotebook,
  markdownTable,
  type MediaBundle,
  ProgressDisplay,
  readLogRecords,
  type RunWatcher,
  showBundle,
  showFidCurve,
  showImages,
  type ShowImagesOptions,
  showLossCurves,
  showMarkdown,
  showPng,
  showSvg,
  showTable,
  type StopButton,
  stopButton,
  type Table,
  watchRun,
  type WatchRunOptions,
} from "./lib/notebook/display.ts";
export {
  SMOKE_FAMILIES,
  type SmokeFamily,
  type SmokeFiles,
  smokeFiles,
  smokeTeacherConfig,
} from "./lib/notebook/smoke.ts";
