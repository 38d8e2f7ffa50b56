/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Types shared by the kernel programs (tollgate.bpf.c) and userspace
 * (loader/src/event.rs mirrors them byte for byte; a layout test there
 * checks the sizes). Only fixed-width fields, explicit padding, no
 * pointers: the ring buffer carries raw bytes between two compilers.
 */
#ifndef TOLLGATE_COMMON_H
#define TOLLGATE_COMMON_H

#include <linux/types.h>

/* Event kinds. */
#define TG_REFUSED        1 /* inet_sk_error_report, ECONNREFUSED */
#define TG_RESET          2 /* inet_sk_error_report, ECONNRESET */
#define TG_TIMEDOUT       3 /* inet_sk_error_report, ETIMEDOUT */
#define TG_SYN_RETRANS    4 /* tcp_retransmit_skb in SYN_SENT */
#define TG_RETRANS        5 /* tcp_retransmit_skb in any other state */
#define TG_RST_RECEIVED   6 /* tcp_receive_reset (cookie set) */
#define TG_RST_SENT       7 /* tcp_send_reset (value = reason) */
#define TG_STATE          8 /* inet_sock_set_state (old_state -> value) */
#define TG_CLOSED         9 /* tcp_destroy_sock with sock_ops stats */
#define TG_OTHER_ERROR   10 /* inet_sk_error_report, any other errno */
#define TG_PEER_CLOSED   11 /* sock_ops: the upstream closed (FIN, -> CLOSE_WAIT) */

/* Upstream filter key: one (address, port) the gateway connects to.
 * IPv4 addresses take the first 4 bytes of addr, the rest is zero. */
struct tg_addr_key {
	__u8 addr[16];
	__u16 port;   /* host byte order */
	__u16 family; /* AF_INET or AF_INET6 */
};

/* One ring-buffer record (72 bytes). */
struct tg_event {
	__u64 ts_ns;    /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 cookie;   /* socket cookie, 0 where the hook has none */
	__u64 aux;      /* TG_CLOSED: connection lifetime in ns */
	__u32 kind;
	__u32 upstream; /* value of the filter map */
	__s32 value;    /* errno, reset reason or new state */
	__u32 srtt_us;  /* TG_CLOSED */
	__u32 retrans;  /* TG_CLOSED */
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u16 old_state;
	__u8 daddr[16];
	__u32 pad;
};

_Static_assert(sizeof(struct tg_event) == 72, "loader/src/event.rs parses 72-byte records");
_Static_assert(sizeof(struct tg_addr_key) == 20, "loader/src/event.rs builds 20-byte keys");

/* Per-connection state kept by sock_ops, keyed by socket cookie. */
struct tg_conn {
	__u64 start_ns;
	__u32 upstream;
	__u32 srtt_us;
	__u32 retrans;
	__u32 rtt_samples;
};

/* srtt histogram: log2 buckets of microseconds, per upstream id. */
#define TG_MAX_UPSTREAMS 256
#define TG_BUCKETS 32

#endif
