// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * tollgate's kernel side: health signals and TCP telemetry for the
 * gateway's upstream connections.
 *
 * Why classic tracepoints and sock_ops: they load on every kernel the
 * gateway targets without kernel BTF (no CO-RE), while kprobes, fentry and
 * lsm do not load on the reference VM kernel (see
 * research/ebpf-on-this-kernel.md). The tracepoint context structs below
 * are written out by hand from /sys/kernel/tracing/events/<cat>/<name>/format
 * (kernel 6.18); only fields present since 5.x are read, and every struct
 * is a prefix of the kernel's record, so newer kernels that append fields
 * (tcp_retransmit_skb gained `err` in 6.x) still match.
 *
 * Every hook is filtered in the kernel by UPSTREAMS, the (address, port)
 * pairs the gateway connects to, so other traffic on the host never
 * reaches the ring buffer. RTT is aggregated in maps (a per-connection
 * entry and a per-upstream histogram), never one record per ACK.
 *
 * Reads: tracepoint records are read straight from the context (the
 * verifier checks each offset against the record size); sock_ops fields go
 * through the kernel's context rewriting. Nothing here dereferences a
 * kernel pointer, so there is no unchecked read at all.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "common.h"

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define TCP_SYN_SENT 2
#define TCP_CLOSE_WAIT 8

/* The kernel needs a GPL-compatible license string for the helpers used. */
char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct tg_addr_key);
	__type(value, __u32);
} UPSTREAMS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} EVENTS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct tg_conn);
} CONNS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TG_MAX_UPSTREAMS * TG_BUCKETS);
	__type(key, __u32);
	__type(value, __u64);
} SRTT_HIST SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TG_MAX_UPSTREAMS);
	__type(key, __u32);
	__type(value, __u64);
} SRTT_SUM_US SEC(".maps");

/* Live stats of the gateway's upstream connections by local port:
 * srtt_us in the low 32 bits, total retransmits in the high 32. mmap-able,
 * so workers read a request's srtt and retransmits without a system call.
 * Two connections to different upstreams may share a local port; the
 * later one wins (telemetry, not accounting). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
} PORT_STATS SEC(".maps");

/* Events the ring buffer had no room for (index 0). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} DROPPED SEC(".maps");

/* ---- tracepoint records (offsets from the format files) ---------------- */

struct tp_common {
	__u16 type;
	__u8 flags;
	__u8 preempt_count;
	__s32 pid;
};

struct tp_sk_error_report { /* sock/inet_sk_error_report */
	struct tp_common c;
	__s32 error;        /* 8 */
	__u16 sport;        /* 12 */
	__u16 dport;        /* 14 */
	__u16 family;       /* 16 */
	__u16 protocol;     /* 18 */
	__u8 saddr[4];      /* 20 */
	__u8 daddr[4];      /* 24 */
	__u8 saddr_v6[16];  /* 28 */
	__u8 daddr_v6[16];  /* 44 */
};

struct tp_tcp_event_sk { /* tcp/tcp_receive_reset, tcp/tcp_destroy_sock */
	struct tp_common c;
	__u64 skaddr;       /* 8 */
	__u16 sport;        /* 16 */
	__u16 dport;        /* 18 */
	__u16 family;       /* 20 */
	__u8 saddr[4];      /* 22 */
	__u8 daddr[4];      /* 26 */
	__u8 saddr_v6[16];  /* 30 */
	__u8 daddr_v6[16];  /* 46 */
	__u16 pad;          /* 62 */
	__u64 sock_cookie;  /* 64 */
};

struct tp_tcp_send_reset { /* tcp/tcp_send_reset */
	struct tp_common c;
	__u64 skbaddr;      /* 8 */
	__u64 skaddr;       /* 16 */
	__s32 state;        /* 24 */
	__u32 reason;       /* 28 */
	__u8 saddr[28];     /* 32: sockaddr_in / sockaddr_in6 */
	__u8 daddr[28];     /* 60 */
};

struct tp_tcp_retransmit_skb { /* tcp/tcp_retransmit_skb */
	struct tp_common c;
	__u64 skbaddr;      /* 8 */
	__u64 skaddr;       /* 16 */
	__s32 state;        /* 24 */
	__u16 sport;        /* 28 */
	__u16 dport;        /* 30 */
	__u16 family;       /* 32 */
	__u8 saddr[4];      /* 34 */
	__u8 daddr[4];      /* 38 */
	__u8 saddr_v6[16];  /* 42 */
	__u8 daddr_v6[16];  /* 58 */
};

struct tp_inet_sock_set_state { /* sock/inet_sock_set_state */
	struct tp_common c;
	__u64 skaddr;       /* 8 */
	__s32 oldstate;     /* 16 */
	__s32 newstate;     /* 20 */
	__u16 sport;        /* 24 */
	__u16 dport;        /* 26 */
	__u16 family;       /* 28 */
	__u16 protocol;     /* 30 */
	__u8 saddr[4];      /* 32 */
	__u8 daddr[4];      /* 36 */
	__u8 saddr_v6[16];  /* 40 */
	__u8 daddr_v6[16];  /* 56 */
};

/* ---- helpers ------------------------------------------------------------ */

/* The filter key of a destination; v4 and v6 arrays are both passed and
 * the family picks one. */
static __always_inline void make_key(struct tg_addr_key *k, __u16 family,
				     const __u8 *v4, const __u8 *v6, __u16 port)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->family = family;
	k->port = port;
	if (family == AF_INET6)
		__builtin_memcpy(k->addr, v6, 16);
	else
		__builtin_memcpy(k->addr, v4, 4);
}

/* Upstream id of a destination, or -1 when it is not an upstream. */
static __always_inline long upstream_of(struct tg_addr_key *k)
{
	__u32 *up = bpf_map_lookup_elem(&UPSTREAMS, k);
	return up ? (long)*up : -1;
}

static __always_inline void count_drop(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&DROPPED, &zero);
	if (n)
		__sync_fetch_and_add(n, 1);
}

static __always_inline struct tg_event *reserve(void)
{
	struct tg_event *e = bpf_ringbuf_reserve(&EVENTS, sizeof(*e), 0);
	if (!e) {
		count_drop();
		return 0;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = bpf_ktime_get_ns();
	return e;
}

static __always_inline void fill_dest(struct tg_event *e, const struct tg_addr_key *k,
				      __u32 up, __u16 sport)
{
	e->upstream = up;
	e->family = k->family;
	e->dport = k->port;
	e->sport = sport;
	__builtin_memcpy(e->daddr, k->addr, 16);
}

/* The event of a connection to an upstream, its destination filled in:
 * NULL when `k` is not an upstream (the in-kernel filter) or the ring
 * buffer is full (counted as a drop). */
static __always_inline struct tg_event *upstream_event(struct tg_addr_key *k, __u16 sport)
{
	long up = upstream_of(k);
	if (up < 0)
		return 0;
	struct tg_event *e = reserve();
	if (!e)
		return 0;
	fill_dest(e, k, (__u32)up, sport);
	return e;
}

static __always_inline __u32 log2_u32(__u32 v)
{
	__u32 r = 0;
	if (v >= 1 << 16) { v >>= 16; r += 16; }
	if (v >= 1 << 8)  { v >>= 8;  r += 8; }
	if (v >= 1 << 4)  { v >>= 4;  r += 4; }
	if (v >= 1 << 2)  { v >>= 2;  r += 2; }
	if (v >= 1 << 1)  { r += 1; }
	return r;
}

/* ---- health signals ----------------------------------------------------- */

static __always_inline int try_sk_error_report(struct tp_sk_error_report *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return 0;
	struct tg_addr_key k;
	make_key(&k, ctx->family, ctx->daddr, ctx->daddr_v6, ctx->dport);
	struct tg_event *e = upstream_event(&k, ctx->sport);
	if (!e)
		return 0;
	switch (ctx->error) {
	case 111: e->kind = TG_REFUSED; break;
	case 104: e->kind = TG_RESET; break;
	case 110: e->kind = TG_TIMEDOUT; break;
	default: e->kind = TG_OTHER_ERROR; break;
	}
	e->value = ctx->error;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tracepoint/sock/inet_sk_error_report")
int sk_error_report(struct tp_sk_error_report *ctx)
{
	return try_sk_error_report(ctx);
}

static __always_inline int try_receive_reset(struct tp_tcp_event_sk *ctx)
{
	struct tg_addr_key k;
	make_key(&k, ctx->family, ctx->daddr, ctx->daddr_v6, ctx->dport);
	struct tg_event *e = upstream_event(&k, ctx->sport);
	if (!e)
		return 0;
	e->kind = TG_RST_RECEIVED;
	e->cookie = ctx->sock_cookie;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tracepoint/tcp/tcp_receive_reset")
int tcp_receive_reset(struct tp_tcp_event_sk *ctx)
{
	return try_receive_reset(ctx);
}

static __always_inline int try_send_reset(struct tp_tcp_send_reset *ctx)
{
	/* daddr is a sockaddr_in(6): family @0, port (network order) @2,
	 * IPv4 address @4, IPv6 address @8. */
	__u16 family = *(__u16 *)&ctx->daddr[0];
	__u16 port = bpf_ntohs(*(__u16 *)&ctx->daddr[2]);
	struct tg_addr_key k;
	make_key(&k, family, &ctx->daddr[4], &ctx->daddr[8], port);
	struct tg_event *e = upstream_event(&k, bpf_ntohs(*(__u16 *)&ctx->saddr[2]));
	if (!e)
		return 0;
	e->kind = TG_RST_SENT;
	e->value = (__s32)ctx->reason;
	e->old_state = (__u16)ctx->state;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tracepoint/tcp/tcp_send_reset")
int tcp_send_reset(struct tp_tcp_send_reset *ctx)
{
	return try_send_reset(ctx);
}

static __always_inline int try_retransmit(struct tp_tcp_retransmit_skb *ctx)
{
	struct tg_addr_key k;
	make_key(&k, ctx->family, ctx->daddr, ctx->daddr_v6, ctx->dport);
	struct tg_event *e = upstream_event(&k, ctx->sport);
	if (!e)
		return 0;
	e->kind = ctx->state == TCP_SYN_SENT ? TG_SYN_RETRANS : TG_RETRANS;
	e->value = ctx->state;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tracepoint/tcp/tcp_retransmit_skb")
int tcp_retransmit_skb(struct tp_tcp_retransmit_skb *ctx)
{
	return try_retransmit(ctx);
}

static __always_inline int try_set_state(struct tp_inet_sock_set_state *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return 0;
	struct tg_addr_key k;
	make_key(&k, ctx->family, ctx->daddr, ctx->daddr_v6, ctx->dport);
	struct tg_event *e = upstream_event(&k, ctx->sport);
	if (!e)
		return 0;
	e->kind = TG_STATE;
	e->old_state = (__u16)ctx->oldstate;
	e->value = ctx->newstate;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tracepoint/sock/inet_sock_set_state")
int inet_sock_set_state(struct tp_inet_sock_set_state *ctx)
{
	return try_set_state(ctx);
}

/* ---- telemetry ---------------------------------------------------------- */

/* Per-connection stats at close: only sockets sock_ops tracked (the
 * gateway's own upstream connections) have a CONNS entry. */
static __always_inline int try_destroy_sock(struct tp_tcp_event_sk *ctx)
{
	__u64 cookie = ctx->sock_cookie;
	struct tg_conn *c = bpf_map_lookup_elem(&CONNS, &cookie);
	if (!c)
		return 0;
	struct tg_addr_key k;
	make_key(&k, ctx->family, ctx->daddr, ctx->daddr_v6, ctx->dport);
	struct tg_event *e = reserve();
	if (e) {
		e->kind = TG_CLOSED;
		e->cookie = cookie;
		e->srtt_us = c->srtt_us;
		e->retrans = c->retrans;
		e->aux = e->ts_ns - c->start_ns;
		fill_dest(e, &k, c->upstream, ctx->sport);
		bpf_ringbuf_submit(e, 0);
	}
	bpf_map_delete_elem(&CONNS, &cookie);
	return 0;
}

SEC("tracepoint/tcp/tcp_destroy_sock")
int tcp_destroy_sock(struct tp_tcp_event_sk *ctx)
{
	return try_destroy_sock(ctx);
}

static __always_inline long sockops_upstream(struct bpf_sock_ops *skops)
{
	struct tg_addr_key k;
	__builtin_memset(&k, 0, sizeof(k));
	/* remote_port is the network-order port; kernels since 5.x put it
	 * in the upper 16 bits of the u32, older ones in the lower. */
	__u32 port = bpf_ntohl(skops->remote_port);
	if (port > 0xffff)
		port >>= 16;
	k.port = (__u16)port;
	k.family = (__u16)skops->family;
	if (skops->family == AF_INET6) {
		/* One 4-byte load per word: clang 14 merges neighbouring
		 * field loads into 8-byte ones, which the verifier refuses
		 * on bpf_sock_ops ("invalid bpf_context access"). */
		const volatile __u32 *ip6 = skops->remote_ip6;
		__u32 a[4] = { ip6[0], ip6[1], ip6[2], ip6[3] };
		__builtin_memcpy(k.addr, a, 16);
	} else {
		__u32 a = skops->remote_ip4;
		__builtin_memcpy(k.addr, &a, 4);
	}
	return upstream_of(&k);
}

static __always_inline void port_stats(struct bpf_sock_ops *skops, __u32 srtt, __u32 retrans)
{
	__u32 port = skops->local_port & 0xffff;
	__u64 *v = bpf_map_lookup_elem(&PORT_STATS, &port);
	if (v)
		*v = ((__u64)retrans << 32) | srtt;
}

static __always_inline int try_sockops(struct bpf_sock_ops *skops)
{
	__u64 cookie;
	struct tg_conn *c;
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		/* Only the gateway's connections to upstreams get callbacks:
		 * accepted client sockets in the same cgroup stay quiet. */
		if (sockops_upstream(skops) >= 0)
			bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_RTT_CB_FLAG |
						  BPF_SOCK_OPS_RETRANS_CB_FLAG |
						  BPF_SOCK_OPS_STATE_CB_FLAG);
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: {
		long up = sockops_upstream(skops);
		if (up < 0)
			break;
		struct tg_conn n = {
			.start_ns = bpf_ktime_get_ns(),
			.upstream = (__u32)up,
			.srtt_us = skops->srtt_us >> 3,
		};
		cookie = bpf_get_socket_cookie(skops);
		bpf_map_update_elem(&CONNS, &cookie, &n, BPF_ANY);
		port_stats(skops, n.srtt_us, 0);
		break;
	}
	case BPF_SOCK_OPS_RTT_CB: {
		cookie = bpf_get_socket_cookie(skops);
		c = bpf_map_lookup_elem(&CONNS, &cookie);
		if (!c)
			break;
		__u32 srtt = skops->srtt_us >> 3;
		c->srtt_us = srtt;
		c->rtt_samples += 1;
		__u32 up = c->upstream & (TG_MAX_UPSTREAMS - 1);
		__u32 b = log2_u32(srtt ? srtt : 1);
		__u32 idx = up * TG_BUCKETS + (b & (TG_BUCKETS - 1));
		__u64 *n = bpf_map_lookup_elem(&SRTT_HIST, &idx);
		if (n)
			__sync_fetch_and_add(n, 1);
		__u64 *sum = bpf_map_lookup_elem(&SRTT_SUM_US, &up);
		if (sum)
			__sync_fetch_and_add(sum, srtt);
		port_stats(skops, srtt, c->retrans);
		break;
	}
	case BPF_SOCK_OPS_STATE_CB:
		/* The upstream closed its side (an idle keep-alive timeout, a
		 * restart): the pool must not write a request to it. */
		if (skops->args[1] == TCP_CLOSE_WAIT) {
			cookie = bpf_get_socket_cookie(skops);
			c = bpf_map_lookup_elem(&CONNS, &cookie);
			if (!c)
				break;
			struct tg_event *e = reserve();
			if (!e)
				break;
			e->kind = TG_PEER_CLOSED;
			e->cookie = cookie;
			e->upstream = c->upstream;
			e->sport = (__u16)skops->local_port;
			e->family = (__u16)skops->family;
			bpf_ringbuf_submit(e, 0);
		}
		break;
	case BPF_SOCK_OPS_RETRANS_CB:
		cookie = bpf_get_socket_cookie(skops);
		c = bpf_map_lookup_elem(&CONNS, &cookie);
		if (c) {
			c->retrans = skops->total_retrans;
			port_stats(skops, c->srtt_us, c->retrans);
		}
		break;
	}
	return 1;
}

SEC("sockops")
int sock_ops(struct bpf_sock_ops *skops)
{
	return try_sockops(skops);
}
