// The miner's (or a validator's) hotkey: a Bittensor wallet file, or a keyring URI for development.
//
// Bittensor keeps hotkeys unencrypted at ~/.bittensor/wallets/NAME/hotkeys/HOTKEY as JSON with
// accountId, publicKey, secretPhrase, secretSeed and ss58Address. The secretSeed is the sr25519
// mini-secret; the key derived from it must match ss58Address, or the file is refused.
import { readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { OptionError } from '../errors.ts';
import { signerFromSeed, signerFromUri, type Signer } from './signing.ts';

export interface WalletLocation {
  /** Folder holding the wallets. Default ~/.bittensor/wallets. */
  path?: string;
  /** Wallet (coldkey) name. Default "default". */
  name?: string;
  /** Hotkey name. Default "default". */
  hotkey?: string;
}

export const DEFAULT_WALLET_PATH = '~/.bittensor/wallets';

function expandHome(path: string): string {
  return path === '~' || path.startsWith('~/') ? join(homedir(), path.slice(1)) : path;
}

const SAFE_NAME = /^[A-Za-z0-9._-]{1,128}$/;

/** The hotkey file a wallet location names. */
export function hotkeyFilePath(location: WalletLocation = {}): string {
  const name = location.name ?? 'default';
  const hotkey = location.hotkey ?? 'default';
  for (const [what, value] of [['wallet name', name], ['hotkey name', hotkey]] as const) {
    if (!SAFE_NAME.test(value) || value === '.' || value === '..') {
      throw new OptionError(`${what} '${value}' must be 1-128 characters of letters, digits, '.', '_' or '-'`);
    }
  }
  return resolve(expandHome(location.path ?? DEFAULT_WALLET_PATH), name, 'hotkeys', hotkey);
}

/** Read a Bittensor hotkey file and return a signer for it. */
export async function loadWalletHotkey(location: WalletLocation = {}): Promise<Signer> {
  const file = hotkeyFilePath(location);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new OptionError(
      code === 'ENOENT'
        ? `no hotkey file at ${file}: create one with btcli (btcli wallet new_hotkey), pick another with --wallet.name/--wallet.hotkey, or use --hotkey-uri //Name for development`
        : `cannot read hotkey file ${file}: ${(err as Error).message}`,
    );
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new OptionError(`hotkey file ${file} is not JSON (an encrypted hotkey is not supported; hotkeys are stored unencrypted by btcli)`);
  }
  if (typeof json !== 'object' || json === null) throw new OptionError(`hotkey file ${file} is not a JSON object`);
  const { secretSeed, secretPhrase, ss58Address } = json as Record<string, unknown>;
  let signer: Signer;
  if (typeof secretSeed === 'string') {
    signer = await signerFromSeed(secretSeed).catch(() => {
      throw new OptionError(`hotkey file ${file}: secretSeed must be "0x" + 64 hex digits`);
    });
  } else if (typeof secretPhrase === 'string') {
    signer = await signerFromUri(secretPhrase).catch(() => {
      throw new OptionError(`hotkey file ${file}: secretPhrase is not a valid mnemonic`);
    });
  } else {
    throw new OptionError(`hotkey file ${file} has neither secretSeed nor secretPhrase`);
  }
  if (ss58Address !== undefined && ss58Address !== signer.address) {
    throw new OptionError(`hotkey file ${file}: the key derived from its secret is ${signer.address}, but ss58Address says ${String(ss58Address)}`);
  }
  return signer;
}

export interface KeySource {
  /** A keyring URI (//Alice) for development; takes precedence over the wallet. */
  hotkeyUri?: string;
  wallet?: WalletLocation;
}

/** The signer named by --hotkey-uri, else by the --wallet.* options. */
export async function loadSigner(source: KeySource): Promise<Signer> {
  if (source.hotkeyUri !== undefined && source.hotkeyUri !== '') return signerFromUri(source.hotkeyUri);
  return loadWalletHotkey(source.wallet ?? {});
}
