// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title Enclave signers the owner has verified off-chain.
/// @notice The owner's tool (`nitro-oracle register`) verifies the Nitro attestation document
/// (AWS root -> certificate chain -> COSE signature -> PCRs -> public key -> user_data) before it
/// calls `register`. The chain stores what was verified: the signer address, a hash of its
/// PCR0/1/2/16, the attestation document's hash, and an expiry. Verifying the attestation
/// on-chain is not done in this version (about 13.8M gas per document).
contract OracleRegistry {
    /// One slot per signer, read by `PriceFeed` on every report: expiry and revocation only.
    struct Status {
        uint64 expiresAt;
        uint64 registeredAt;
        bool revoked;
    }

    /// What the owner verified, for audits; never read on the report path.
    struct Evidence {
        bytes32 pcrsHash;
        bytes32 attestationHash;
    }

    address public owner;
    mapping(address => Status) private _status;
    mapping(address => Evidence) public evidence;

    event SignerRegistered(
        address indexed signer,
        bytes32 indexed pcrsHash,
        bytes32 attestationHash,
        uint64 expiresAt,
        bytes pcr0,
        bytes pcr1,
        bytes pcr2,
        bytes pcr16
    );
    event SignerRevoked(address indexed signer);
    event OwnershipTransferred(address indexed previousOwner, address indexed newOwner);

    error NotOwner(address caller);
    error ZeroAddress();
    error BadPcrLength(uint256 index, uint256 length);
    error AllZeroPcrs();
    error ExpiryNotInFuture(uint64 expiresAt, uint256 blockTimestamp);
    error UnknownSigner(address signer);
    error AlreadyRevoked(address signer);

    /// A PCR is a SHA-384 digest (Nitro Enclaves' PCR bank).
    uint256 public constant PCR_LENGTH = 48;

    constructor(address owner_) {
        if (owner_ == address(0)) revert ZeroAddress();
        owner = owner_;
        emit OwnershipTransferred(address(0), owner_);
    }

    modifier onlyOwner() {
        if (msg.sender != owner) revert NotOwner(msg.sender);
        _;
    }

    function transferOwnership(address newOwner) external onlyOwner {
        if (newOwner == address(0)) revert ZeroAddress();
        emit OwnershipTransferred(owner, newOwner);
        owner = newOwner;
    }

    /// keccak256(pcr0 || pcr1 || pcr2 || pcr16): what `evidence[signer].pcrsHash` holds.
    function pcrsHash(bytes calldata pcr0, bytes calldata pcr1, bytes calldata pcr2, bytes calldata pcr16)
        public
        pure
        returns (bytes32)
    {
        return keccak256(abi.encodePacked(pcr0, pcr1, pcr2, pcr16));
    }

    /// @notice Register an enclave signer after verifying its attestation off-chain, or renew it
    /// with a fresh attestation: the enclave key lives until the enclave restarts, while a
    /// registration expires. A revoked signer stays revoked.
    function register(
        address signer,
        bytes calldata pcr0,
        bytes calldata pcr1,
        bytes calldata pcr2,
        bytes calldata pcr16,
        bytes32 attestationHash,
        uint64 expiresAt
    ) external onlyOwner {
        if (signer == address(0)) revert ZeroAddress();
        if (_status[signer].revoked) revert AlreadyRevoked(signer);
        bytes32 h = _checkedPcrsHash(pcr0, pcr1, pcr2, pcr16);
        if (expiresAt <= block.timestamp) revert ExpiryNotInFuture(expiresAt, block.timestamp);
        _setExpiry(signer, expiresAt);
        evidence[signer] = Evidence({pcrsHash: h, attestationHash: attestationHash});
        emit SignerRegistered(signer, h, attestationHash, expiresAt, pcr0, pcr1, pcr2, pcr16);
    }

    /// @notice Revoke a signer for good (a compromised image, a retired enclave).
    function revoke(address signer) external onlyOwner {
        Status storage s = _status[signer];
        if (s.registeredAt == 0) revert UnknownSigner(signer);
        if (s.revoked) revert AlreadyRevoked(signer);
        s.revoked = true;
        emit SignerRevoked(signer);
    }

    /// @notice The signer's one-slot status: zero `registeredAt` means never registered.
    function status(address signer) external view returns (uint64 expiresAt, uint64 registeredAt, bool revoked) {
        Status memory s = _status[signer];
        return (s.expiresAt, s.registeredAt, s.revoked);
    }

    function _checkedPcrsHash(
        bytes calldata pcr0,
        bytes calldata pcr1,
        bytes calldata pcr2,
        bytes calldata pcr16
    ) private pure returns (bytes32) {
        _checkPcr(0, pcr0);
        _checkPcr(1, pcr1);
        _checkPcr(2, pcr2);
        _checkPcr(16, pcr16);
        // A debug-mode enclave reports all-zero PCRs: its memory is readable from the parent.
        if (_isZero(pcr0) && _isZero(pcr1) && _isZero(pcr2)) revert AllZeroPcrs();
        return pcrsHash(pcr0, pcr1, pcr2, pcr16);
    }

    function _setExpiry(address signer, uint64 expiresAt) private {
        Status storage s = _status[signer];
        s.expiresAt = expiresAt;
        if (s.registeredAt == 0) s.registeredAt = uint64(block.timestamp);
    }

    function _checkPcr(uint256 index, bytes calldata pcr) private pure {
        if (pcr.length != PCR_LENGTH) revert BadPcrLength(index, pcr.length);
    }

    function _isZero(bytes calldata pcr) private pure returns (bool) {
        for (uint256 i = 0; i < pcr.length; ++i) {
            if (pcr[i] != 0) return false;
        }
        return true;
    }
}
