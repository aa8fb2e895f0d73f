// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {AggregatorV3Interface} from "./AggregatorV3Interface.sol";
import {OracleRegistry} from "./OracleRegistry.sol";

/// @title One price feed, updated by anyone with a report signed by a registered enclave.
/// @notice The relay is permissionless: what makes a report acceptable is its EIP-712 signature by
/// a signer of `REGISTRY` that is registered, unexpired and unrevoked, under the domain
/// (name, version, block.chainid, address(this)), plus the checks below. Every rejection is a
/// named custom error. Reads follow Chainlink's AggregatorV3Interface.
///
/// Storage is packed for the report path: one slot with the latest round and observation time,
/// and a ring of `HISTORY` one-slot rounds (int128 answer | uint64 roundId | uint64 observation
/// time), all written non-zero at deployment so that every update rewrites warm-able non-zero
/// slots (5,000 gas each) instead of creating them (22,100 gas each).
contract PriceFeed is AggregatorV3Interface {
    /// The EIP-712 message, field for field as the enclave signs it (oracle_example/report.py).
    struct PriceReport {
        bytes32 feedId;
        int256 price;
        uint8 decimals;
        uint64 roundId;
        uint64 observationsTimestamp;
        uint64 validFrom;
        uint64 expiresAt;
        uint64 timestamp;
        uint16 numSources;
        uint16 minSources;
        uint32 dispersionBps;
        bytes32 sourcesHash;
        bytes32 configHash;
    }

    struct Round {
        int128 answer;
        uint64 roundId;
        uint64 observationsTimestamp;
    }

    struct Latest {
        uint64 roundId;
        uint64 observationsTimestamp;
        // Always true: keeps the slot non-zero from deployment on (see the contract notice).
        bool deployed;
    }

    bytes32 public constant PRICE_REPORT_TYPEHASH = keccak256(
        "PriceReport(bytes32 feedId,int256 price,uint8 decimals,uint64 roundId,uint64 observationsTimestamp,"
        "uint64 validFrom,uint64 expiresAt,uint64 timestamp,uint16 numSources,uint16 minSources,"
        "uint32 dispersionBps,bytes32 sourcesHash,bytes32 configHash)"
    );
    bytes32 private constant _DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 private constant _NAME_HASH = keccak256("TEE Price Oracle");
    bytes32 private constant _VERSION_HASH = keccak256("1");
    /// secp256k1 order / 2: a larger s is the malleable twin of a valid signature.
    uint256 private constant _HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;
    uint256 private constant _REPORT_WORDS = 13;
    uint256 public constant override version = 1;

    OracleRegistry public immutable REGISTRY;
    bytes32 public immutable FEED_ID;
    uint8 public immutable override decimals;
    /// The quorum this feed requires: a report's own quorum and its source count must reach it.
    uint16 public immutable MIN_SOURCES;
    /// Oldest acceptable `observationsTimestamp`, in seconds before `block.timestamp`.
    uint64 public immutable MAX_AGE;
    /// How many past rounds `getRoundData` can still return.
    uint64 public immutable HISTORY;
    uint256 private immutable _CACHED_CHAIN_ID;
    bytes32 private immutable _CACHED_DOMAIN_SEPARATOR;

    string private _description;
    Latest private _latest;
    mapping(uint256 => Round) private _rounds;

    event AnswerUpdated(int256 indexed current, uint256 indexed roundId, uint256 updatedAt);

    error WrongFeed(bytes32 feedId, bytes32 expected);
    error WrongDecimals(uint8 decimals, uint8 expected);
    error InvalidPrice(int256 price);
    error BelowQuorum(uint16 numSources, uint16 minSources, uint16 required);
    error NotYetValid(uint64 validFrom, uint256 blockTimestamp);
    error ReportExpired(uint64 expiresAt, uint256 blockTimestamp);
    error StaleReport(uint64 observationsTimestamp, uint256 blockTimestamp, uint64 maxAge);
    error RoundNotNewer(uint64 roundId, uint64 latestRoundId);
    error ObservationNotNewer(uint64 observationsTimestamp, uint64 latestObservationsTimestamp);
    error UnknownSigner(address signer);
    error SignerExpired(address signer, uint64 expiresAt);
    error SignerRevoked(address signer);
    error InvalidSignature();
    error SignatureMismatch(address recovered, address signer);
    error RoundNotFound(uint80 roundId);
    error BadConstructorArgument(string what);

    constructor(
        OracleRegistry registry,
        bytes32 feedId,
        uint8 decimals_,
        string memory description_,
        uint16 minSources,
        uint64 maxAge,
        uint64 history
    ) {
        if (address(registry) == address(0)) revert BadConstructorArgument("registry");
        if (minSources == 0) revert BadConstructorArgument("minSources");
        if (maxAge == 0) revert BadConstructorArgument("maxAge");
        if (history == 0 || history > 1024) revert BadConstructorArgument("history");
        REGISTRY = registry;
        FEED_ID = feedId;
        decimals = decimals_;
        _description = description_;
        MIN_SOURCES = minSources;
        MAX_AGE = maxAge;
        HISTORY = history;
        _CACHED_CHAIN_ID = block.chainid;
        _CACHED_DOMAIN_SEPARATOR = _buildDomainSeparator();
        _latest = Latest({roundId: 0, observationsTimestamp: 0, deployed: true});
        // Round id 0 is never a real round, so these placeholders are never returned.
        for (uint256 i = 0; i < history; ++i) {
            _rounds[i] = Round({answer: 0, roundId: 0, observationsTimestamp: 1});
        }
    }

    // --- the report path ----------------------------------------------------------------------

    /// @notice Store a signed report. `signer` is the enclave address the relay claims; the
    /// signature must recover to it under this contract's domain, so a report signed for
    /// another chain id or contract reverts with `SignatureMismatch`.
    /// @param r,vs The signature in EIP-2098 compact form (v folded into the top bit of s).
    function submit(PriceReport calldata report, address signer, bytes32 r, bytes32 vs) external {
        if (report.feedId != FEED_ID) revert WrongFeed(report.feedId, FEED_ID);
        if (report.decimals != decimals) revert WrongDecimals(report.decimals, decimals);
        int256 price = report.price;
        if (price <= 0 || price > type(int128).max) revert InvalidPrice(price);
        uint16 required = MIN_SOURCES;
        if (report.minSources < required || report.numSources < report.minSources) {
            revert BelowQuorum(report.numSources, report.minSources, required);
        }
        uint64 observed = report.observationsTimestamp;
        if (report.validFrom > block.timestamp) revert NotYetValid(report.validFrom, block.timestamp);
        if (report.expiresAt < block.timestamp) revert ReportExpired(report.expiresAt, block.timestamp);
        if (uint256(observed) + MAX_AGE < block.timestamp) revert StaleReport(observed, block.timestamp, MAX_AGE);
        Latest memory latest = _latest;
        uint64 roundId = report.roundId;
        if (roundId <= latest.roundId) revert RoundNotNewer(roundId, latest.roundId);
        if (observed <= latest.observationsTimestamp) {
            revert ObservationNotNewer(observed, latest.observationsTimestamp);
        }
        _checkSigner(signer);
        address recovered = _recover(_digest(report), r, vs);
        if (recovered != signer) revert SignatureMismatch(recovered, signer);

        _latest = Latest({roundId: roundId, observationsTimestamp: observed, deployed: true});
        _rounds[roundId % HISTORY] =
            Round({answer: int128(price), roundId: roundId, observationsTimestamp: observed});
        emit AnswerUpdated(price, roundId, observed);
    }

    /// @notice The EIP-712 digest this contract expects the enclave to have signed.
    function digest(PriceReport calldata report) external view returns (bytes32) {
        return _digest(report);
    }

    function domainSeparator() public view returns (bytes32) {
        return block.chainid == _CACHED_CHAIN_ID ? _CACHED_DOMAIN_SEPARATOR : _buildDomainSeparator();
    }

    function _buildDomainSeparator() private view returns (bytes32) {
        return keccak256(abi.encode(_DOMAIN_TYPEHASH, _NAME_HASH, _VERSION_HASH, block.chainid, address(this)));
    }

    function _digest(PriceReport calldata report) private view returns (bytes32 result) {
        bytes32 separator = domainSeparator();
        bytes32 typeHash = PRICE_REPORT_TYPEHASH;
        // hashStruct = keccak256(typeHash || the 13 static words as they sit in calldata). A word
        // with dirty high bits hashes differently from what the enclave signed and fails recovery.
        assembly ("memory-safe") {
            let ptr := mload(0x40)
            mstore(ptr, typeHash)
            calldatacopy(add(ptr, 0x20), report, mul(_REPORT_WORDS, 0x20))
            let structHash := keccak256(ptr, mul(add(_REPORT_WORDS, 1), 0x20))
            mstore(ptr, hex"1901")
            mstore(add(ptr, 0x02), separator)
            mstore(add(ptr, 0x22), structHash)
            result := keccak256(ptr, 0x42)
        }
    }

    function _recover(bytes32 hash, bytes32 r, bytes32 vs) private pure returns (address) {
        uint256 s = uint256(vs) & ((1 << 255) - 1);
        if (s > _HALF_N || s == 0 || r == 0) revert InvalidSignature();
        uint8 v = uint8((uint256(vs) >> 255) + 27);
        address recovered = ecrecover(hash, v, r, bytes32(s));
        if (recovered == address(0)) revert InvalidSignature();
        return recovered;
    }

    function _checkSigner(address signer) private view {
        (uint64 expiresAt, uint64 registeredAt, bool revoked) = REGISTRY.status(signer);
        if (registeredAt == 0) revert UnknownSigner(signer);
        if (revoked) revert SignerRevoked(signer);
        if (expiresAt < block.timestamp) revert SignerExpired(signer, expiresAt);
    }

    // --- AggregatorV3Interface ------------------------------------------------------------------

    function description() external view override returns (string memory) {
        return _description;
    }

    function latestRoundData() external view override returns (uint80, int256, uint256, uint256, uint80) {
        uint64 roundId = _latest.roundId;
        if (roundId == 0) revert RoundNotFound(0);
        return _round(roundId);
    }

    function getRoundData(uint80 roundId) external view override returns (uint80, int256, uint256, uint256, uint80) {
        return _round(roundId);
    }

    /// (roundId, answer, startedAt, updatedAt, answeredInRound): both times are the report's
    /// `observationsTimestamp`, its oldest source observation, so staleness checks on
    /// `updatedAt` are conservative.
    function _round(uint80 roundId) private view returns (uint80, int256, uint256, uint256, uint80) {
        if (roundId == 0 || roundId > type(uint64).max) revert RoundNotFound(roundId);
        Round memory round = _rounds[roundId % HISTORY];
        if (round.roundId != roundId) revert RoundNotFound(roundId);
        return (roundId, round.answer, round.observationsTimestamp, round.observationsTimestamp, roundId);
    }
}
